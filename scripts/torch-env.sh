# Sourced by scripts/cargo and .ci/run: makes sure the PyTorch environment that provides libtorch
# (and serves as the tests' oracle) exists, then exports what tch's build and the tests need.
#
# The environment lives outside the checkout, keyed by the versions it holds, so that every
# clone on this machine shares it:
#   ${TCH_STATE_DICT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tch-state-dict}/torch-<v>-torchvision-<v>-py<v>
# It is created on first use (about 4.7 GB with the CUDA wheels) and reused afterwards.

TORCH_VERSION=2.11.0
TORCHVISION_VERSION=0.26.0
SAFETENSORS_VERSION=0.7.0
NUMPY_VERSION=2.4.6
PACKAGING_VERSION=26.4
ZSTANDARD_VERSION=0.25.0
# omegaconf (Hydra's configs, for the fixtures and oracle of configs that refer to
# themselves) with the versions of its two dependencies that pip resolves for it.
OMEGACONF_VERSION=2.3.0
ANTLR4_VERSION=4.9.3
PYYAML_VERSION=6.0.4
_tsd_requirements="torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION safetensors==$SAFETENSORS_VERSION numpy==$NUMPY_VERSION packaging==$PACKAGING_VERSION zstandard==$ZSTANDARD_VERSION omegaconf==$OMEGACONF_VERSION antlr4-python3-runtime==$ANTLR4_VERSION PyYAML==$PYYAML_VERSION"

_tsd_python=${TCH_STATE_DICT_BASE_PYTHON:-python3}
if ! command -v "$_tsd_python" >/dev/null 2>&1; then
    echo "tch-state-dict: needs python3 (3.10 or newer) with pip and venv on PATH" >&2
    return 1 2>/dev/null || exit 1
fi
_tsd_pyver=$("$_tsd_python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
_tsd_cache=${TCH_STATE_DICT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tch-state-dict}
TCH_STATE_DICT_VENV="$_tsd_cache/torch-$TORCH_VERSION-torchvision-$TORCHVISION_VERSION-py$_tsd_pyver"

# .complete holds the requirements the environment was completed with: a missing file means
# an interrupted or new install (start over), different contents an added package (install
# what is missing, keep torch).
_tsd_ready() {
    [ -f "$TCH_STATE_DICT_VENV/.complete" ] &&
    [ "$(cat "$TCH_STATE_DICT_VENV/.complete")" = "$_tsd_requirements" ]
}
if ! _tsd_ready; then
    mkdir -p "$_tsd_cache"
    # One installer at a time; a second waits, then finds the environment complete.
    exec 9>"$_tsd_cache/.lock"
    flock 9
    if ! _tsd_ready; then
        echo "tch-state-dict: installing $_tsd_requirements into $TCH_STATE_DICT_VENV" \
             "(once; a few minutes)" >&2
        if [ ! -f "$TCH_STATE_DICT_VENV/.complete" ]; then
            rm -rf "$TCH_STATE_DICT_VENV"
            "$_tsd_python" -m venv "$TCH_STATE_DICT_VENV"
        fi &&
        # shellcheck disable=SC2086
        "$TCH_STATE_DICT_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            $_tsd_requirements &&
        "$TCH_STATE_DICT_VENV/bin/python" -c "import torch, torchvision, safetensors.torch" &&
        echo "$_tsd_requirements" > "$TCH_STATE_DICT_VENV/.complete" || {
            echo "tch-state-dict: installing the PyTorch environment failed" >&2
            flock -u 9
            return 1 2>/dev/null || exit 1
        }
    fi
    flock -u 9
fi

# tch's build asks this environment's python for libtorch's paths and version.
export PATH="$TCH_STATE_DICT_VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
unset LIBTORCH
# The tests run Python torch as their oracle through this interpreter.
export TCH_STATE_DICT_PYTHON="$TCH_STATE_DICT_VENV/bin/python"
