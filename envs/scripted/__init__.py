"""The scripted env (`env.name: scripted`): smoke runs, benchmarks and pipeline tests at full speed."""
