# Source this on a GPU machine without network, from the project root:
#     source offline/setup.sh WHEEL_DIR CIFAR10_TARBALL_OR_DIR [DATA_DIR]
# Installs the wheels of offline/gather_wheels.py into a private folder (nothing of the system's
# Python changes), unpacks CIFAR-10 (image folders, train/<class>/*.jpg) into DATA_DIR (default
# /tmp/nasflow-cifar10) unless a folder is given, decodes it once into the project's cache, and
# exports NASFLOW_DATA for `python -m pipeline_steps paper-run --data "$NASFLOW_DATA"`.
wheels=${1:?wheel folder}; cifar=${2:?CIFAR-10 tarball or folder}; data=${3:-/tmp/nasflow-cifar10}
site=${NASFLOW_SITE:-/tmp/nasflow-site}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl \
    || return 1
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! command -v python >/dev/null; then  # the rules call `python`
    mkdir -p "$site/bin" && ln -sf "$(command -v python3)" "$site/bin/python" && export PATH="$site/bin:$PATH"
fi
if [ -d "$cifar" ]; then data=$cifar; else mkdir -p "$data" && tar -xzf "$cifar" -C "$data" || return 1; fi
python -c "from pipeline_steps.data.datasets import load_split; [load_split('cifar10', s, source='folder', root='$data') for s in ('train', 'test')]" \
    || return 1
export NASFLOW_DATA=$data
