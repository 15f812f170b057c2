#!/usr/bin/env bash
# Deploy or update ice-servers on one box, one checked release at a time; safe to run again and again.
#
#   deploy/deploy.sh              build a release of this checkout, check it, switch to it, reload
#   deploy/deploy.sh --rollback   switch back to the previous release, reload
#
#   APP_DIR          where releases live (default /opt/ice-servers): never under a web server's root
#   APP_USER         the system user the service runs as and who owns .env (default ice-servers,
#                    created if missing); never nginx's user
#   SERVICE_MANAGER  pm2 | systemd | none (default: systemd if its unit is installed, else pm2 if
#                    pm2 is on the PATH, else none)
#   HEALTH_URL       checked after the reload or start (default http://127.0.0.1:8000/healthz)
#   HEALTH_TIMEOUT   seconds the new release has to answer from there (default 30)
#   SYSTEMD_UNIT_DIR where the units go (default /etc/systemd/system)
#   KEEP_RELEASES    releases kept besides the current and the previous one (default 2)
#   PULL             1 (default): git pull --ff-only this checkout first, when it has a remote
#   PYTHON           the interpreter of new venvs (default /usr/bin/python3)
#
# Layout:  APP_DIR/.env (mode 600, owner APP_USER; never read or rewritten here)
#          APP_DIR/releases/<UTC time>-<commit>/   the code and its own .venv (owned by root)
#          APP_DIR/current -> releases/...         what the service runs
#          APP_DIR/previous -> releases/...        what --rollback goes back to
#
# Each release is built beside the running one: the code of this checkout, its own .venv (copied
# from the current release's and brought to the pinned requirements, or made anew), then checked:
# the settings, and the app imported and built with the deployment's .env. A bad one stops here and
# is removed; the running service and the current release are untouched. Then `current` is switched
# atomically (rename of a symlink) and the service reloaded gracefully (gunicorn HUP: new workers
# import the new release, old ones finish their requests) or started. It prints no secret.
set -euo pipefail

APP_DIR=${APP_DIR:-/opt/ice-servers}
APP_USER=${APP_USER:-ice-servers}
SERVICE_MANAGER=${SERVICE_MANAGER:-}
HEALTH_URL=${HEALTH_URL:-http://127.0.0.1:8000/healthz}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-30}
# The system's interpreter: every user can run it (a python3 under root's home, pyenv's, cannot be run by APP_USER).
PYTHON=${PYTHON:-$([ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3)}
KEEP_RELEASES=${KEEP_RELEASES:-2}
PULL=${PULL:-1}
UNIT_PATH=${SYSTEMD_UNIT_DIR:-/etc/systemd/system}/ice-servers.service
SOURCE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf 'deploy: %s\n' "$*"; }
warn() { printf 'deploy: WARNING: %s\n' "$*" >&2; }
die() { printf 'deploy: error: %s\n' "$*" >&2; exit 1; }

ROLLBACK=0
case "${1:-}" in
    "") ;;
    --rollback) ROLLBACK=1 ;;
    *) die "unknown argument '$1': deploy.sh takes --rollback or nothing" ;;
esac

# -- 1. Refuse what would be unsafe, before anything changes. ------------------------------------

[ -f "$SOURCE_DIR/wsgi.py" ] && [ -f "$SOURCE_DIR/requirements.txt" ] || die "$SOURCE_DIR is not an ice-servers checkout"
case "$APP_DIR" in /*) ;; *) die "APP_DIR must be an absolute path, not '$APP_DIR'" ;; esac
APP_DIR=${APP_DIR%/}

if [ -z "$SERVICE_MANAGER" ]; then
    if [ -f "$UNIT_PATH" ]; then SERVICE_MANAGER=systemd
    elif command -v pm2 >/dev/null 2>&1; then SERVICE_MANAGER=pm2
    else SERVICE_MANAGER=none
    fi
    say "SERVICE_MANAGER not set: using $SERVICE_MANAGER"
fi
case "$SERVICE_MANAGER" in
    pm2|systemd|none) ;;
    *) die "SERVICE_MANAGER must be pm2, systemd or none, not '$SERVICE_MANAGER'" ;;
esac
[ "$SERVICE_MANAGER" != systemd ] || [ "$(id -u)" = 0 ] || die "SERVICE_MANAGER=systemd needs root (sudo)"
case "$HEALTH_TIMEOUT" in
    ''|*[!0-9]*) die "HEALTH_TIMEOUT must be a whole number of seconds, not '$HEALTH_TIMEOUT'" ;;
esac
case "$KEEP_RELEASES" in
    ''|*[!0-9]*) die "KEEP_RELEASES must be a whole number (releases kept besides the current and the previous one), not '$KEEP_RELEASES'" ;;
esac

# The real path of APP_DIR, or of its nearest existing parent with the rest appended.
resolve() {
    local path=$1 rest=""
    while [ ! -e "$path" ]; do rest="/$(basename "$path")$rest"; path=$(dirname "$path"); done
    printf '%s%s\n' "$(cd "$path" && pwd -P)" "$rest"
}

# Every root and alias of nginx's enabled configuration (what `nginx -T` shows), one per line.
nginx_web_roots() {
    local dump
    if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then return 0; fi
    if dump=$(PATH="$PATH:/usr/sbin" nginx -T 2>/dev/null); then
        # Comments dropped, then every root or alias directive wherever it stands on its line.
        printf '%s\n' "$dump" | sed -e 's/#.*//' \
            | grep -oE '(^|[[:space:];{}])(root|alias)[[:space:]]+"?[^";[:space:]]+"?[[:space:]]*;' \
            | sed -E 's/^.*(root|alias)[[:space:]]+"?([^";[:space:]]+)"?[[:space:]]*;$/\2/' || true
    else
        warn "could not read nginx's configuration (nginx -T; run as root): APP_DIR is not checked against its web roots"
    fi
}

app_dir_real=$(resolve "$APP_DIR")
while IFS= read -r root; do
    [ -n "$root" ] || continue
    root_real=$(resolve "$root")
    case "$app_dir_real/" in
        "${root_real%/}/"*) die "APP_DIR $APP_DIR is under $root, the web root of an enabled nginx site: nginx would serve its .env and code. Use another APP_DIR (default /opt/ice-servers)" ;;
    esac
done < <(nginx_web_roots)

nginx_user=$(PATH="$PATH:/usr/sbin" nginx -T 2>/dev/null | sed -e 's/#.*//' | grep -oE '(^|[[:space:];])user[[:space:]]+[^;[:space:]]+' \
    | sed -E 's/.*user[[:space:]]+//' | head -n 1 || true)
for web_user in www-data "$nginx_user"; do
    [ -n "$web_user" ] && [ "$APP_USER" = "$web_user" ] && die "APP_USER $APP_USER is the web server's user: nginx could then read .env. Use a user of its own (default ice-servers)"
done

if ! id "$APP_USER" >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "APP_USER $APP_USER does not exist (run as root and deploy.sh creates it)"
    say "creating system user $APP_USER"
    useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin "$APP_USER"
fi
[ "$SOURCE_DIR" != "$APP_DIR" ] || die "APP_DIR is this checkout itself: clone the repository elsewhere (e.g. $APP_DIR/src) and deploy from there"

mkdir -p "$APP_DIR/releases"
if [ "$(id -u)" = 0 ]; then chmod 755 "$APP_DIR" "$APP_DIR/releases"; fi

# -- 2. Secrets: mode and owner only; the content is never read here. ----------------------------

ENV_FILE=$APP_DIR/.env
env_digest() { if [ -f "$ENV_FILE" ]; then sha256sum "$ENV_FILE" | cut -d' ' -f1; else echo none; fi; }
env_before=$(env_digest)
if [ -f "$ENV_FILE" ]; then
    chmod 600 "$ENV_FILE"
    if [ "$(id -u)" = 0 ]; then chown "$APP_USER": "$ENV_FILE"; fi
    [ "$(stat -c %U "$ENV_FILE")" = "$APP_USER" ] || warn "$ENV_FILE is owned by $(stat -c %U "$ENV_FILE"), not $APP_USER: the service may not read it (run as root to fix)"
    say ".env kept (mode 600, owner $(stat -c %U "$ENV_FILE"))"
else
    warn "no $ENV_FILE: the service will serve public STUN only. cp $SOURCE_DIR/.env.example $ENV_FILE, fill it in, and deploy again"
fi

# -- 3. The release: built and checked beside the running one. -----------------------------------

current=$(readlink "$APP_DIR/current" 2>/dev/null || true)
previous=$(readlink "$APP_DIR/previous" 2>/dev/null || true)

as_app_user() {  # run a command as APP_USER, as the service would (when we are root)
    if [ "$(id -u)" = 0 ] && [ "$APP_USER" != root ]; then runuser -u "$APP_USER" -- "$@"; else "$@"; fi
}

nginx_limit_check() {  # warn when the nginx site counts callers otherwise than ICE_RATE_LIMIT (its limit is in front of the cache)
    local release=$1 dump rate problem
    local -a limits
    if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then return 0; fi
    dump=$(PATH="$PATH:/usr/sbin" nginx -T 2>/dev/null | sed -e 's/#.*//') || return 0
    # sed, not grep (no match is not a failure under pipefail), and sed -n 1p, not head (no SIGPIPE).
    rate=$(printf '%s\n' "$dump" | sed -n '/limit_req_zone[[:space:]][^;]*zone=ice_servers_per_address:/s/.*[[:space:]]rate=\([^;[:space:]]*\).*/\1/p' | sed -n 1p)
    [ -n "$rate" ] || return 0  # not the shipped site (or not readable): nothing to compare
    mapfile -t limits < <(printf '%s\n' "$dump" | sed -n '/limit_req[[:space:]][^;]*zone=ice_servers_per_address[[:space:];]/s/.*limit_req[[:space:]]\+\([^;]*\);.*/\1/p' \
        | tr -s ' \t' '  ' | sed -e 's/^ //' -e 's/ $//' | sort -u)
    problem=$(cd "$release" && as_app_user env ICE_ENV_FILE="$ENV_FILE" .venv/bin/python -m app.settings_check --nginx-limit "$rate" "${limits[@]}" 2>/dev/null) || return 0
    if [ -n "$problem" ]; then warn "$problem"; fi
}

check_release() {  # the settings, then the app imported and built, as a worker of APP_USER would
    local release=$1 out
    if ! out=$(cd "$release" && as_app_user env ICE_ENV_FILE="$ENV_FILE" .venv/bin/python -m app.settings_check 2>&1 >/dev/null); then
        out=$(printf '%s\n' "$out" | grep -v '^\s*$' | tail -n 1)
        case "$out" in
            ice-servers:*) printf '%s\n' "$out" ;;  # a setting: the one line naming it
            *) printf 'ice-servers: the release does not start: %s\n' "$out" ;;  # the code: the traceback's last line
        esac
        return 1
    fi
    if ! out=$(cd "$release" && as_app_user env ICE_ENV_FILE="$ENV_FILE" .venv/bin/python -c 'import wsgi' 2>&1); then
        printf 'ice-servers: the release does not start: %s\n' "$(printf '%s\n' "$out" | grep -v '^\s*$' | tail -n 1)"
        return 1
    fi
}

if [ "$ROLLBACK" = 1 ]; then
    [ -n "$previous" ] && [ -d "$APP_DIR/$previous" ] || die "there is no previous release to roll back to"
    if ! why=$(check_release "$APP_DIR/$previous"); then die "${why}; the previous release no longer passes its check, nothing was switched"; fi
    say "rolling back to ${previous#releases/}"
    new=$previous
else
    if [ "$PULL" = 1 ] && git -C "$SOURCE_DIR" rev-parse --is-inside-work-tree >/dev/null 2>&1 \
        && [ -n "$(git -c safe.directory="$SOURCE_DIR" -C "$SOURCE_DIR" remote)" ]; then
        say "pulling $(git -c safe.directory="$SOURCE_DIR" -C "$SOURCE_DIR" rev-parse --abbrev-ref HEAD)"
        git -c safe.directory="$SOURCE_DIR" -C "$SOURCE_DIR" pull --ff-only --quiet
    fi
    commit=$(git -c safe.directory="$SOURCE_DIR" -C "$SOURCE_DIR" rev-parse --short=8 HEAD 2>/dev/null || echo local)
    name=$(date -u +%Y%m%dT%H%M%SZ)-$commit
    while [ -e "$APP_DIR/releases/$name" ]; do name=$name+; done
    new=releases/$name
    release=$APP_DIR/$new
    say "building release $name"
    mkdir "$release"
    trap 'rm -rf "$release"' EXIT  # a release that is not switched to is not kept
    if git -C "$SOURCE_DIR" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$SOURCE_DIR" && git -c safe.directory="$SOURCE_DIR" ls-files -z --cached --others --exclude-standard \
            | tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$release"
    else
        (cd "$SOURCE_DIR" && tar --exclude=./.git --exclude=./.venv --exclude=./.tools --exclude=./.env -cf - .) | tar -xf - -C "$release"
    fi
    ln -s ../../.env "$release/.env"  # flask commands run in current/ read the deployment's .env
    printf '%s\n' "$name" > "$release/RELEASE"  # /healthz names it to loopback: the smoke test below compares
    if [ -n "$current" ] && [ -x "$APP_DIR/$current/.venv/bin/python" ]; then
        # The current release's venv as a start: pip then only changes what requirements.txt changed.
        cp -a "$APP_DIR/$current/.venv" "$release/.venv"
        old_venv=$APP_DIR/$current/.venv
        grep -rlI --fixed-strings "$old_venv" "$release/.venv/bin" 2>/dev/null | while IFS= read -r script; do
            [ -L "$script" ] || sed -i "s|$old_venv|$release/.venv|g" "$script"
        done
    else
        say "creating the release's .venv"
        "$PYTHON" -m venv "$release/.venv" || die "could not create a venv: on Debian/Ubuntu, apt-get install python3-venv"
    fi
    say "installing requirements.txt into the release's .venv"
    "$release/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$release/requirements.txt" \
        || die "pip could not install requirements.txt; nothing was switched"
    if ! why=$(check_release "$release"); then die "${why}; nothing was switched, restarted or reloaded"; fi
fi
nginx_limit_check "$APP_DIR/$new"
[ "$(env_digest)" = "$env_before" ] || die ".env changed during the deploy; this must never happen"

# -- 4. Switch: one rename, so a worker starting at any moment sees one whole release. --------------

ln -sfn "$new" "$APP_DIR/.current.new" && mv -Tf "$APP_DIR/.current.new" "$APP_DIR/current"
trap - EXIT
if [ -n "$current" ] && [ "$current" != "$new" ]; then
    ln -sfn "$current" "$APP_DIR/.previous.new" && mv -Tf "$APP_DIR/.previous.new" "$APP_DIR/previous"
fi
say "current release: ${new#releases/}"

# Keep the current, the previous and the newest KEEP_RELEASES others (the two links are not counted among them).
keep=$(printf '%s\n%s\n' "$(readlink "$APP_DIR/current")" "$(readlink "$APP_DIR/previous" 2>/dev/null || true)")
ls -1 "$APP_DIR/releases" | sort -r | while IFS= read -r old; do
    printf '%s\n' "$keep" | grep -qxF "releases/$old" || printf '%s\n' "$old"
done | tail -n +"$((KEEP_RELEASES + 1))" | while IFS= read -r old; do
    rm -rf "${APP_DIR:?}/releases/$old"
done

# -- 5. Put it live without dropping a request: a graceful reload when it runs, a start when not. ----

case "$SERVICE_MANAGER" in
    systemd)
        sed -e "s#/opt/ice-servers#$APP_DIR#g" -e "s#^User=ice-servers#User=$APP_USER#" -e "s#^Group=ice-servers#Group=$(id -gn "$APP_USER")#" \
            "$APP_DIR/current/deploy/ice-servers.service" > "$UNIT_PATH.new"
        mv "$UNIT_PATH.new" "$UNIT_PATH"
        cp "$APP_DIR/current/deploy/ice-servers.socket" "${UNIT_PATH%.service}.socket"
        systemctl daemon-reload
        systemctl enable --quiet ice-servers.socket ice-servers
        if systemctl is-active --quiet ice-servers; then
            say "reloading ice-servers (systemd, graceful)"
            systemctl reload ice-servers
        else
            say "starting ice-servers (systemd)"
            systemctl start ice-servers.socket ice-servers
        fi
        ;;
    pm2)
        # The main PID, or nothing: pm2 prints a banner on stdout when its daemon first starts.
        pid=$(pm2 pid ice-servers 2>/dev/null | tail -n 1 | tr -dc '0-9' || true)
        if [ -n "$pid" ] && [ "$pid" != 0 ]; then
            say "reloading ice-servers (pm2, graceful: gunicorn HUP)"
            pm2 sendSignal SIGHUP ice-servers >/dev/null
        else
            say "starting ice-servers (pm2)"
            ICE_APP_DIR="$APP_DIR" ICE_APP_USER="$APP_USER" pm2 startOrRestart "$APP_DIR/current/deploy/ecosystem.config.js" --update-env >/dev/null
        fi
        pm2 save >/dev/null
        ;;
    none)
        say "SERVICE_MANAGER=none: not starting anything; start it with"
        say "  cd $APP_DIR/current && ICE_ENV_FILE=$ENV_FILE .venv/bin/python -m gunicorn -c gunicorn.conf.py --chdir $APP_DIR/current wsgi:app"
        exit 0
        ;;
esac

# -- 6. Smoke test: the new release is what answers, on many fresh connections in a row. ------------

# A reload whose new workers never took over (or only some of them) leaves old workers answering
# /healthz: compare the release it names (to loopback and ICE_METRICS_ALLOW) with the one switched to,
# 20 times in a row on new connections (a pool half old answers 20 in a row about once in a million).
expected=${new#releases/}
served="" streak=0 answered=0 named=0
for _ in $(seq 1 $((HEALTH_TIMEOUT * 5))); do
    if body=$(curl -fsS --max-time 2 "$HEALTH_URL" 2>/dev/null); then
        answered=1
        served=$(printf '%s' "$body" | sed -n 's/.*"release": *"\([^"]*\)".*/\1/p')
        [ -z "$served" ] || named=1
        if [ "$served" = "$expected" ]; then streak=$((streak + 1)); else streak=0; fi
        if [ "$streak" -ge 20 ]; then
            say "healthy: $HEALTH_URL answers from release $expected"
            exit 0
        fi
    fi
    sleep 0.2
done
case "$SERVICE_MANAGER" in
    systemd) logs="journalctl -u ice-servers -n 50" ;;
    *) logs="pm2 logs ice-servers --lines 50" ;;
esac
if [ "$answered" = 1 ] && [ "$named" = 0 ]; then
    warn "$HEALTH_URL never named its release (not asked from an ICE_METRICS_ALLOW address?): which release serves was not checked"
    say "healthy: $HEALTH_URL answers"
    exit 0
fi
if [ "$answered" = 1 ]; then
    die "the new release did not take: $HEALTH_URL still answers from ${served:-another release}, not $expected; see $logs (deploy.sh --rollback switches back)"
fi
die "$HEALTH_URL does not answer; see $logs (deploy.sh --rollback goes back)"
