#!/usr/bin/env bash
# Set up abl on a fresh Debian machine: the audio packages, a virtual environment with the
# package, and the prepared data. Idempotent: when everything is in place it takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the real-audio tasks come from (see README, "Data").
# postgresql: the server binary the PostgreSQL tests start on loopback (tests/pg.py).
# chromium: the headless browser the report tests load every page in (tests/browser.py).
# wesnoth-1.16-music, asterisk-core-sounds-*, hedgewars-data, lincity-ng-data,
# ktuberling-data, warzone2100-music, megaglest-data: unlabelled pretraining audio
# (model/data/corpus.py).
# slurm-wlm, munge: the one-node Slurm cluster the launcher tests start on loopback (tests/slurm.py).
APT_PACKAGES=(0ad-data fluid-soundfont-gm libfluidsynth3 fillets-ng-data-cs fillets-ng-data-nl espeak-ng
  wesnoth-1.16-music asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav
  asterisk-core-sounds-fr-wav asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav
  hedgewars-data lincity-ng-data ktuberling-data warzone2100-music megaglest-data
  postgresql chromium slurm-wlm munge)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
# Reinstall only when the project's dependency list changed.
stamp=.venv/.abl-installed
want=$(sha1sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "setup: installing abl and its dependencies into .venv (a few minutes the first time)"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev,pg]'
  echo "$want" >"$stamp"
fi

.venv/bin/abl data prepare
