"""megatiny.eval: benchmark and perplexity evaluation of megatiny checkpoints.

    lm_eval_adapter  the lm-evaluation-harness model `megatiny` (MegatinyLM)
    harness          run tasks or a named suite, write results.json + results.md (run_lm_eval)
    suites           suite definitions (tinyllama-commonsense, ...) and the paper-style table
    perplexity       loss / perplexity on held-out indexed data
    tasks/           the bundled offline lm-eval task megatiny_local_mc
    run_report       loss curves of a finished run
    generation       prompts -> text from an HF export or any megatiny checkpoint (`megatiny generate`)

Command lines: `megatiny evaluate` (= tools/evaluate.py), and `python -m megatiny.eval` (lm-eval's
CLI with `megatiny`). Nothing heavy is imported here; import the submodules you need. Only
lm_eval_adapter, harness and __main__ need lm-eval (megatiny[eval]).
"""
