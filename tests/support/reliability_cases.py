"""The bad-input table: one row per thing a user can get wrong, and what they see.

This one list drives three things, so they cannot drift apart:

* ``tests/cli/test_reliability.py`` runs every ``Case`` through the real CLI and checks that it exits 2
  with exactly one ``error: ...`` line matching ``shows`` (``…`` stands for the variable part), no
  traceback, and that nothing was written under the case's ``out`` path;
* ``scripts/troubleshooting_table.py`` writes the ``docs/troubleshooting.md`` table from it;
* a test asserts that table equals the generated one.

``Behaviour`` rows are things that are not an error line (automatic retries, sanitised names, the
app's error boxes); each names the test that checks it, and a test asserts that test exists.

Placeholders in ``args`` (``{tiny4}``, ``{tmp}``, ...) are filled in by the test's workspace
fixture: ``{tiny4}`` is a saved 4-block Llama, ``{scores4}``/``{plan4}`` its scores/plan, the text
and broken-model files are written into the test's tmp folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCORE = ["score", "--model", "{tiny4}", "--samples", "2", "--seq-len", "32", "--out", "{tmp}/scores.json"]
PLAN = ["plan", "--scores", "{scores4}", "--out", "{tmp}/plan.json"]
PPL = ["ppl", "--windows", "1", "--seq-len", "32", "--model"]
PRUNE = ["prune", "--model", "{tiny4}", "--eval-windows", "0", "--out", "{tmp}/pruned", "--plan"]


@dataclass(frozen=True)
class Case:
    id: str
    area: str
    input: str  # what the user did, as the docs say it
    args: list  # CLI arguments (placeholders filled by the test)
    shows: str  # the error line; "…" = any text
    out: str | None = None  # must not exist afterwards (nothing half-written)
    env: dict = field(default_factory=dict)
    subprocess: bool = False  # needs its own interpreter (env read when a library is imported)
    rlimit: tuple | None = None  # ("AS", extra bytes over current) or ("FSIZE", bytes), set around the run


CASES: list[Case] = [
    # ------------------------------------------------------------------ model input
    Case("missing-dir", "model", "nonexistent model path", PPL + ["{tmp}/no/such/dir"],
         "error: no such model directory or file: …/no/such/dir"),
    Case("missing-gguf", "model", "nonexistent .gguf file", PPL + ["{tmp}/missing.gguf"],
         "error: no such GGUF file: …/missing.gguf"),
    Case("hub-offline", "model", "hub id while offline (or misspelt / gated)", PPL + ["nosuch-org/nosuch-model"],
         "error: could not load 'nosuch-org/nosuch-model': not a local model and not reachable on the Hugging Face "
         "hub (offline, misspelt, or gated?) — …",
         env={"HF_HUB_OFFLINE": "1", "HF_TOKEN": "secret-xyz"}, subprocess=True),
    Case("no-config", "model", "directory without config.json", PPL + ["{noconf}"],
         "error: directory '…' has no config.json: not a Hugging Face model directory"),
    Case("file-not-dir", "model", "a plain file (not a model folder or .gguf)", PPL + ["{noconf}/notes.json"],
         "error: '…/notes.json' is a file; give a model directory, a .gguf file or a hub id"),
    Case("arch-t5", "model", "unsupported architecture (encoder-decoder, e.g. T5)", PPL + ["{t5}"],
         "error: unsupported architecture in '…': Unrecognized configuration class …; supported: llama, mistral, "
         "qwen2, qwen3, gemma, gemma2, gemma3, phi3, olmo, granite, gpt2, gpt-neox, opt"),
    Case("arch-unknown", "model", "unknown model type in config.json", PPL + ["{unk}"],
         "error: unsupported architecture in '…': The checkpoint you are trying to load has model type "
         "`nosuchfamily` …; supported: llama, …"),
    Case("safetensors-truncated", "model", "truncated safetensors weights", PPL + ["{trunc_st}"],
         "error: could not load '…' (truncated or corrupt file?): SafetensorError: …"),
    Case("safetensors-garbage", "model", "corrupt safetensors weights (random bytes)", PPL + ["{garbage_st}"],
         "error: could not load '…' (truncated or corrupt file?): SafetensorError: …"),
    Case("gguf-truncated", "model", "truncated GGUF file", PPL + ["{trunc_gguf}"],
         "error: could not load '…trunc.gguf' (truncated or corrupt file?): …"),
    Case("gguf-not-gguf", "model", "file named .gguf that is not GGUF", PPL + ["{bad_gguf}"],
         "error: '…bad.gguf' is not a GGUF file (bad magic bytes)"),
    Case("remote-code", "model", "model with custom code, no --trust-remote-code", PPL + ["{custom}"],
         "error: '…' contains custom code; it is not run unless you pass --trust-remote-code (only do that for "
         "code you have read)"),
    Case("too-large", "model", "model larger than memory", PPL + ["{huge}"],
         "error: '…' does not fit in memory: try --dtype bfloat16, --device-map auto (CPU offload) or --stream "
         "(one block at a time)", rlimit=("AS", 2 << 30)),
    Case("bad-dtype", "model", "unknown --dtype", PPL + ["{tiny4}", "--dtype", "float8"],
         "error: unknown dtype 'float8': use auto, float32, float16 or bfloat16"),
    # ------------------------------------------------------------------ calibration / evaluation text
    Case("text-empty-file", "text", "empty text file", SCORE + ["--calib", "{empty}"],
         "error: file empty.txt is empty or only whitespace: give some text", out="{tmp}/scores.json"),
    Case("text-blank-file", "text", "whitespace-only text file", SCORE + ["--calib", "{blank}"],
         "error: file blank.txt is empty or only whitespace: give some text", out="{tmp}/scores.json"),
    Case("text-blank-pasted", "text", "pasted text that is only whitespace", SCORE + ["--calib", "text:   \n\t "],
         "error: the text is empty: paste or upload some text first", out="{tmp}/scores.json"),
    Case("text-short", "text", "fewer tokens than the windows need", SCORE + ["--calib", "{short}"],
         "error: file short.txt has … tokens: only 1 window(s) of 32 fit, 2 requested; use fewer samples, a "
         "shorter sequence length or more text", out="{tmp}/scores.json"),
    Case("text-binary", "text", "binary file (NUL bytes)", SCORE + ["--calib", "{binary}"],
         "error: '…binary.bin' is not UTF-8 text (binary file?)", out="{tmp}/scores.json"),
    Case("text-latin1", "text", "non-UTF-8 text (e.g. Latin-1)", SCORE + ["--calib", "{latin1}"],
         "error: '…latin1.txt' is not UTF-8 text (binary file?)", out="{tmp}/scores.json"),
    Case("text-missing", "text", "missing text file", SCORE + ["--calib", "{tmp}/nope.txt"],
         "error: no such text file: …nope.txt (use wikitext2, text:..., hf:DATASET/SPLIT or a path)",
         out="{tmp}/scores.json"),
    Case("text-dir", "text", "a directory given as text file", SCORE + ["--calib", "{tmp}"],
         "error: '…' is a directory, not a text file", out="{tmp}/scores.json"),
    Case("text-too-large", "text", "text file over the size limit (SIMDIFF_MAX_TEXT_MB)",
         SCORE + ["--calib", "{bigtext}"],
         "error: '…bigtext.txt' is 2 MB, over the 1 MB limit (SIMDIFF_MAX_TEXT_MB)", out="{tmp}/scores.json",
         env={"SIMDIFF_MAX_TEXT_MB": "1"}),
    Case("text-hf-missing", "text", "HF dataset that does not exist / offline",
         SCORE + ["--calib", "hf:nosuch-org/nosuch-dataset/train"],
         "error: could not load dataset 'nosuch-org/nosuch-dataset/train' (offline or no such dataset/split): …",
         out="{tmp}/scores.json", env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}, subprocess=True),
    # ------------------------------------------------------------------ pruning
    Case("ratio-zero", "pruning", "ratio 0", PLAN + ["--ratio", "0"],
         "error: ratio must be between 0 and 1 (exclusive), got 0.0", out="{tmp}/plan.json"),
    Case("ratio-negative", "pruning", "negative ratio", PLAN + ["--ratio=-0.2"],
         "error: ratio must be between 0 and 1 (exclusive), got -0.2", out="{tmp}/plan.json"),
    Case("ratio-nan", "pruning", "ratio NaN", PLAN + ["--ratio", "nan"],
         "error: ratio must be between 0 and 1 (exclusive), got nan", out="{tmp}/plan.json"),
    Case("ratio-one", "pruning", "ratio 1 (or more)", PLAN + ["--ratio", "1"],
         "error: ratio must be between 0 and 1 (exclusive), got 1.0", out="{tmp}/plan.json"),
    Case("num-all", "pruning", "count that removes every block", PLAN + ["--num", "4"],
         "error: removing 4 of 4 blocks would leave none; remove at most 3", out="{tmp}/plan.json"),
    Case("num-none", "pruning", "count that removes no block", PLAN + ["--num", "0"],
         "error: number of blocks to remove must be at least 1, got 0", out="{tmp}/plan.json"),
    Case("locked", "pruning", "first/last block locked, ratio cannot be met", PLAN + ["--ratio", "0.75"],
         "error: cannot remove 3 blocks with the first and last block locked: only 2 removable",
         out="{tmp}/plan.json"),
    Case("bad-criterion", "pruning", "unknown criterion", PLAN + ["--ratio", "0.25", "--criterion", "magic"],
         "error: unknown criterion 'magic'; choose from …", out="{tmp}/plan.json"),
    Case("bad-alpha", "pruning", "alpha outside [0, 1]", PLAN + ["--ratio", "0.25", "--alpha", "2"],
         "error: --alpha must lie in [0, 1], got 2.0", out="{tmp}/plan.json"),
    Case("scores-corrupt", "pruning", "scores file that is not JSON",
         ["plan", "--scores", "{badjson}", "--ratio", "0.25", "--out", "{tmp}/plan.json"],
         "error: scores file …bad.json is not valid JSON: …", out="{tmp}/plan.json"),
    Case("plan-other-model", "pruning", "plan made for another model (block count differs)", PRUNE + ["{plan6}"],
         "error: plan was made for a model with 6 blocks but this model has 4 (plan for 'tiny-6')",
         out="{tmp}/pruned"),
    Case("plan-not-json", "pruning", "plan file that is not JSON", PRUNE + ["{badjson}"],
         "error: plan file …bad.json is not valid JSON: …", out="{tmp}/pruned"),
    Case("plan-not-object", "pruning", "plan JSON that is not an object", PRUNE + ["{planlist}"],
         "error: malformed plan: expected a JSON object", out="{tmp}/pruned"),
    Case("plan-missing-field", "pruning", "plan JSON missing fields", PRUNE + ["{planfields}"],
         "error: malformed plan: missing or bad field …", out="{tmp}/pruned"),
    Case("plan-bad-index", "pruning", "plan removing a block that does not exist", PRUNE + ["{planrange}"],
         "error: plan lists invalid removed blocks [9] for a 4-block model", out="{tmp}/pruned"),
    Case("plan-removes-all", "pruning", "plan removing every block", PRUNE + ["{planall}"],
         "error: plan removes every block: nothing would be left", out="{tmp}/pruned"),
    # ------------------------------------------------------------------ export
    Case("export-exists", "export", "export target already exists (no --force)",
         ["prune", "--model", "{tiny4}", "--eval-windows", "0", "--plan", "{plan4}", "--out", "{exists}"],
         "error: '…exists' already exists; use --force to replace it"),
    Case("export-disk-full", "export", "disk full / write error while exporting",
         PRUNE + ["{plan4}"],
         "error: export failed, nothing written to …pruned: Error while serializing: I/O error: File too large …",
         out="{tmp}/pruned", rlimit=("FSIZE", 2_000_000)),
]


@dataclass(frozen=True)
class Behaviour:
    area: str
    input: str
    shows: str
    test: str  # "file::test_name" that checks it


BEHAVIOURS: list[Behaviour] = [
    Behaviour("model", "custom-code model with --trust-remote-code",
              "`warning: trust_remote_code is ON: the model repository's own Python code will run ...` before "
              "loading; without the flag the code is never imported",
              "tests/cli/test_reliability.py::test_trust_remote_code_runs_only_when_enabled"),
    Behaviour("model", "a model with no recognisable decoder-block list",
              "`unsupported architecture X: no decoder-block list found; supported families: ...`",
              "tests/cli/test_reliability.py::test_no_block_list_names_supported_families"),
    Behaviour("calibration", "GPU out of memory during calibration",
              "the batch is retried with half the batch size (scores identical); at batch size 1: `out of GPU "
              "memory even with batch size 1: use a shorter --seq-len, --dtype bfloat16, or --device cpu`",
              "tests/cli/test_reliability.py::test_oom_during_calibration_halves_batch"),
    Behaviour("text", "very large text file or upload",
              "read and tokenised in chunks, only as far as the windows need (never whole in memory); the "
              "app's upload limit is `server.maxUploadSize` in `.streamlit/config.toml`",
              "tests/cli/test_reliability.py::test_large_text_is_streamed"),
    Behaviour("export", "export name with `/`, `\\` or `..`",
              "sanitised to `[A-Za-z0-9._-]` inside the export folder; a name that escapes (symlink) is refused",
              "tests/cli/test_reliability.py::test_export_names_stay_inside_root"),
    Behaviour("export", "export with --force over an existing folder",
              "replaced atomically (temporary folder, then rename)",
              "tests/cli/test_reliability.py::test_force_replaces_atomically_and_source_untouched"),
    Behaviour("export", "zip of a multi-GB checkpoint",
              "streamed to disk file by file (memory stays flat), written under a temporary name",
              "tests/cli/test_reliability.py::test_zip_is_streamed"),
    Behaviour("model", "hub id with no route to the hub (no HF_HUB_OFFLINE set)",
              "answered in seconds from the local HF cache only, instead of a minute of retries; same message",
              "tests/app/test_reliability_app.py::test_model_failures_show_one_error_and_app_recovers"),
    Behaviour("app", "any bad model, text or upload in the app",
              "one red `st.error` line (same text as the CLI), nothing stored; the next run works",
              "tests/app/test_reliability_app.py::test_text_failures_show_one_error"),
    Behaviour("app", "ratio slider at 100 %, or more blocks than the locks allow",
              "`st.error` on the preview page; moving the slider back recovers",
              "tests/app/test_reliability_app.py::test_impossible_ratio_shows_error_and_recovers"),
    Behaviour("sessions", "two browser sessions on different ratios/criteria/exports",
              "each sees only its own state; the shared cached model keeps its weights hash",
              "tests/app/test_reliability_app.py::test_two_sessions_keep_their_own_state_and_never_mutate_the_model"),
    Behaviour("sessions", "another session loads other models (more than the cache holds)",
              "your session keeps its own model object: no reload, no second copy",
              "tests/app/test_reliability_app.py::test_loading_other_models_does_not_pull_one_from_a_session"),
    Behaviour("sessions", "several browser sessions calibrating (different settings) and previewing at once",
              "all run in parallel, each with its own plan; every session's scores equal its solo run exactly; after they close the server holds none of their results or tensors",
              "tests/browser/test_load_sessions.py::test_concurrent_sessions_equal_solo_runs_and_leave_nothing_behind"),
    Behaviour("secrets", "HF_TOKEN / HUGGING_FACE_HUB_TOKEN in the environment",
              "used by the hub client only; never printed in errors, progress or results",
              "tests/cli/test_reliability.py::test_cli_cases"),
]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    # a code span holding backticks needs a longer fence (CommonMark)
    return f"`` {_cell(text)} ``" if "`" in text else f"`{_cell(text)}`"


def troubleshooting_table() -> str:
    """The troubleshooting table (markdown), bad inputs first, then behaviours."""
    rows = ["| area | input | what you see |", "|---|---|---|"]
    for c in CASES:
        rows.append(f"| {c.area} | {_cell(c.input)} | {_code(c.shows)} (exit 2) |")
    for b in BEHAVIOURS:
        rows.append(f"| {b.area} | {_cell(b.input)} | {_cell(b.shows)} |")
    return "\n".join(rows) + "\n"
