# Shared by the torchrun launchers; sourced, not run.

resolve_config() {  # a file path, or the name of a packaged example config
  if [ -f "$1" ]; then
    printf '%s\n' "$1"
  else
    python - "$1" <<'PY'
import pathlib, sys
import trimodal
name = sys.argv[1].removesuffix(".json")
path = pathlib.Path(trimodal.__file__).parent / "configs" / f"{name}.json"
if not path.is_file():
    sys.exit(f"error: no config file {sys.argv[1]!r} and no packaged example {name!r} "
             f"(examples: {', '.join(sorted(p.stem for p in path.parent.glob('*.json')))})")
print(path)
PY
  fi
}

if [ -z "${NPROC_PER_NODE:-}" ]; then  # default: one process per visible GPU, else 1
  NPROC_PER_NODE=$(python -c "import torch; print(max(1, torch.cuda.device_count()))")
fi
