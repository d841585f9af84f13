# Sourced by scripts/test and scripts/run: make .venv (first use) and install tidewire into it.
# Needs only python3 (>= 3.11), pip and a C compiler.

if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    if ! python3 -m venv .venv; then
        # Debian's python3 has no ensurepip unless python3-venv is installed:
        # make the venv without pip, then let the system pip install pip into it.
        echo "scripts: retrying venv creation without ensurepip" >&2
        python3 -m venv --clear --without-pip .venv
        python3 -m pip --python .venv/bin/python install -q pip
    fi
fi
# shellcheck disable=SC1091
. .venv/bin/activate

# A broken C accelerator must fail loudly instead of silently falling back to pure Python.
export TIDEWIRE_REQUIRE_SPEEDUPS=1
python -m pip install -q -e "${TIDEWIRE_EXTRAS:-.[dev]}"
