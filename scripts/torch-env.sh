# Sourced by scripts/cargo and .ci/run: makes sure the PyTorch environment that provides libtorch
# (and serves as the tests' oracle) exists, then exports what tch's build and the tests need.
#
# The environment lives outside the checkout, keyed by the versions it holds, so that every
# clone on this machine shares it:
#   ${TCH_STATE_DICT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tch-state-dict}/torch-<v>-torchvision-<v>-py<v>
# It is created on first use (about 4.7 GB with the CUDA wheels) and reused afterwards.
#
# TCH_STATE_DICT_TORCH selects the libtorch to build against: 2.11.0 (the default, for tch
# 0.24) or 2.4.0 (for tch 0.17, the oldest tch this crate supports; with a Cargo.lock that
# resolves tch 0.17, see the guide's troubleshooting chapter). The tests' oracle stays torch
# 2.11.0 whatever libtorch is chosen: the fixtures and the behaviour the tests compare with
# are 2.11's.

_tsd_default_torch=2.11.0
TORCH_VERSION=${TCH_STATE_DICT_TORCH:-$_tsd_default_torch}
SAFETENSORS_VERSION=0.7.0
NUMPY_VERSION=2.4.6
PACKAGING_VERSION=26.4
ZSTANDARD_VERSION=0.25.0
# omegaconf (Hydra's configs, for the fixtures and oracle of configs that refer to
# themselves) with the versions of its two dependencies that pip resolves for it.
OMEGACONF_VERSION=2.3.0
ANTLR4_VERSION=4.9.3
PYYAML_VERSION=6.0.4

# The torchvision made for a torch release.
_tsd_torchvision() {
    case $1 in
        2.11.0) echo 0.26.0 ;;
        2.4.0) echo 0.19.0 ;;
        *) return 1 ;;
    esac
}

_tsd_python=${TCH_STATE_DICT_BASE_PYTHON:-python3}
if ! command -v "$_tsd_python" >/dev/null 2>&1; then
    echo "tch-state-dict: needs python3 (3.10 or newer) with pip and venv on PATH" >&2
    return 1 2>/dev/null || exit 1
fi
_tsd_pyver=$("$_tsd_python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
_tsd_cache=${TCH_STATE_DICT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tch-state-dict}

# Makes sure the environment of torch $1 exists and sets _tsd_venv to it. .complete holds the
# requirements the environment was completed with: a missing file means an interrupted or new
# install (start over), different contents an added package (install what is missing, keep
# torch).
_tsd_ensure() {
    local torch=$1 vision requirements
    if ! vision=$(_tsd_torchvision "$torch"); then
        echo "tch-state-dict: TCH_STATE_DICT_TORCH=$torch: no torchvision is pinned for it;" \
             "use 2.11.0 (tch 0.24) or 2.4.0 (tch 0.17)" >&2
        return 1
    fi
    _tsd_venv="$_tsd_cache/torch-$torch-torchvision-$vision-py$_tsd_pyver"
    requirements="torch==$torch torchvision==$vision safetensors==$SAFETENSORS_VERSION numpy==$NUMPY_VERSION packaging==$PACKAGING_VERSION zstandard==$ZSTANDARD_VERSION omegaconf==$OMEGACONF_VERSION antlr4-python3-runtime==$ANTLR4_VERSION PyYAML==$PYYAML_VERSION"
    if [ -f "$_tsd_venv/.complete" ] && [ "$(cat "$_tsd_venv/.complete")" = "$requirements" ]; then
        return 0
    fi
    mkdir -p "$_tsd_cache"
    # One installer at a time; a second waits, then finds the environment complete.
    exec 9>"$_tsd_cache/.lock"
    flock 9
    if ! { [ -f "$_tsd_venv/.complete" ] &&
           [ "$(cat "$_tsd_venv/.complete")" = "$requirements" ]; }; then
        echo "tch-state-dict: installing $requirements into $_tsd_venv (once; a few minutes)" >&2
        if [ ! -f "$_tsd_venv/.complete" ]; then
            rm -rf "$_tsd_venv"
            "$_tsd_python" -m venv "$_tsd_venv"
        fi &&
        # shellcheck disable=SC2086
        "$_tsd_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            $requirements &&
        "$_tsd_venv/bin/python" -c "import torch, torchvision, safetensors.torch" &&
        echo "$requirements" > "$_tsd_venv/.complete" || {
            echo "tch-state-dict: installing the PyTorch environment failed" >&2
            flock -u 9
            return 1
        }
    fi
    flock -u 9
}

# The oracle's environment, then libtorch's when another torch is asked for.
_tsd_ensure "$_tsd_default_torch" || { return 1 2>/dev/null || exit 1; }
_tsd_oracle="$_tsd_venv"
_tsd_ensure "$TORCH_VERSION" || { return 1 2>/dev/null || exit 1; }
TCH_STATE_DICT_VENV="$_tsd_venv"

# tch's build asks this environment's python for libtorch's paths and version.
export PATH="$TCH_STATE_DICT_VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
unset LIBTORCH
# The tests run Python torch as their oracle through this interpreter.
export TCH_STATE_DICT_PYTHON="$_tsd_oracle/bin/python"
