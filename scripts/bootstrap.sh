#!/usr/bin/env bash
# Make a virtual environment with everything vimamba and its tests need; a no-op when it is already there.
#   VIMAMBA_VENV   where the environment lives (default: .venv in the repository)
#   TORCH_SPEC     what to install for PyTorch (default: the releases this project is tested with)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VIMAMBA_VENV:-.venv}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating $venv"
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"

if ! "$py" -c "import torch, torchvision" 2>/dev/null; then
  # torch 2.14.1 + torchvision 0.29.1 is the tested pair (they lie on our machines' disks for Python 3.11);
  # elsewhere any torch>=2.4 with its matching torchvision works.
  default_spec="torch>=2.4 torchvision>=0.19"
  if [ "$(uname -m)" = x86_64 ] && "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    default_spec="torch==2.14.1 torchvision==0.29.1"
  fi
  echo "bootstrap: installing ${TORCH_SPEC:-$default_spec}"
  # shellcheck disable=SC2086
  "$py" -m pip install -q ${TORCH_SPEC:-$default_spec}
fi

if ! "$py" -c "import vimamba, pytest, sklearn, matplotlib, pycocotools" 2>/dev/null \
   || [ pyproject.toml -nt "$venv/.vimamba-installed" ]; then
  echo "bootstrap: installing vimamba[dev] (editable)"
  "$py" -m pip install -q -e ".[dev]"
  touch "$venv/.vimamba-installed"
fi
