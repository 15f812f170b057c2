#!/usr/bin/env bash
# Deploy or update ice-servers on one box; safe to run again and again.
#
#   APP_DIR          the checkout to deploy (default /var/www/html)
#   APP_USER         the user the service runs as and who owns .env (default www-data)
#   SERVICE_MANAGER  pm2 | systemd | none (default: systemd if its unit is installed, else pm2 if
#                    pm2 is on the PATH, else none)
#   HEALTH_URL       checked after the reload or start (default http://127.0.0.1:8000/healthz)
#   SYSTEMD_UNIT_DIR where the units go (default /etc/systemd/system)
#
# It pulls (when APP_DIR is a git checkout with a remote), builds or updates .venv with the pinned
# requirements, checks .env (mode 600, owned by APP_USER; this script never reads or rewrites it),
# checks the new code and settings (a bad one stops here, the running service untouched), then
# reloads the running service gracefully (gunicorn HUP: no request dropped) or starts it, and
# checks /healthz. It prints no secret.
set -euo pipefail

APP_DIR=${APP_DIR:-/var/www/html}
APP_USER=${APP_USER:-www-data}
SERVICE_MANAGER=${SERVICE_MANAGER:-}
HEALTH_URL=${HEALTH_URL:-http://127.0.0.1:8000/healthz}
PYTHON=${PYTHON:-python3}
UNIT_PATH=${SYSTEMD_UNIT_DIR:-/etc/systemd/system}/ice-servers.service

say() { printf 'deploy: %s\n' "$*"; }
warn() { printf 'deploy: WARNING: %s\n' "$*" >&2; }
die() { printf 'deploy: error: %s\n' "$*" >&2; exit 1; }

[ -d "$APP_DIR" ] || die "APP_DIR $APP_DIR does not exist: git clone the repository there first"
cd "$APP_DIR"
[ -f wsgi.py ] && [ -f requirements.txt ] || die "$APP_DIR is not an ice-servers checkout"

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
id "$APP_USER" >/dev/null 2>&1 || die "APP_USER $APP_USER does not exist"

env_digest() { if [ -f .env ]; then sha256sum .env | cut -d' ' -f1; else echo none; fi; }
env_before=$(env_digest)

# 1. Code. .env is ignored by git, so a pull never touches it.
if git -C "$APP_DIR" rev-parse --is-inside-work-tree >/dev/null 2>&1 && [ -n "$(git -c safe.directory="$APP_DIR" remote)" ]; then
    say "pulling $(git -c safe.directory="$APP_DIR" rev-parse --abbrev-ref HEAD)"
    git -c safe.directory="$APP_DIR" pull --ff-only --quiet
fi

# 2. The virtualenv, with exactly the pinned requirements.
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    "$PYTHON" -m venv .venv || die "could not create .venv: on Debian/Ubuntu, apt-get install python3-venv"
fi
say "installing requirements.txt into .venv"
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt

# 3. Secrets: mode and owner only; the content is never read here.
if [ -f .env ]; then
    chmod 600 .env
    if [ "$(id -u)" = 0 ]; then chown "$APP_USER": .env; fi
    [ "$(stat -c %U .env)" = "$APP_USER" ] || warn ".env is owned by $(stat -c %U .env), not $APP_USER: the service may not read it (run as root to fix)"
    say ".env kept (mode 600, owner $(stat -c %U .env))"
else
    warn "no .env in $APP_DIR: the service will serve public STUN only. cp .env.example .env, fill it in, and deploy again"
fi
[ "$(env_digest)" = "$env_before" ] || die ".env changed during the deploy; this must never happen"

# 4. Check the new code and settings before anything runs them: a bad one changes nothing.
if ! check=$(ICE_ENV_FILE="$APP_DIR/.env" .venv/bin/python -m app.settings_check 2>&1 >/dev/null); then
    die "${check##*$'\n'}; nothing was restarted or reloaded"
fi

# 5. Put it live without dropping a request: a graceful reload when it runs, a start when it does not.
case "$SERVICE_MANAGER" in
    systemd)
        [ "$(id -u)" = 0 ] || die "SERVICE_MANAGER=systemd needs root (sudo)"
        sed -e "s#/var/www/html#$APP_DIR#g" -e "s#^User=www-data#User=$APP_USER#" -e "s#^Group=www-data#Group=$(id -gn "$APP_USER")#" \
            deploy/ice-servers.service > "$UNIT_PATH.new"
        mv "$UNIT_PATH.new" "$UNIT_PATH"
        cp deploy/ice-servers.socket "${UNIT_PATH%.service}.socket"
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
            pm2 startOrRestart deploy/ecosystem.config.js --update-env >/dev/null
        fi
        pm2 save >/dev/null
        ;;
    none)
        say "SERVICE_MANAGER=none: not starting anything; start it with .venv/bin/gunicorn -c gunicorn.conf.py wsgi:app"
        exit 0
        ;;
esac

# 6. Smoke test.
for _ in $(seq 1 30); do
    if curl -fsS --max-time 2 "$HEALTH_URL" >/dev/null 2>&1; then
        say "healthy: $HEALTH_URL answers"
        exit 0
    fi
    sleep 1
done
case "$SERVICE_MANAGER" in
    systemd) die "$HEALTH_URL does not answer; see journalctl -u ice-servers -n 50" ;;
    pm2) die "$HEALTH_URL does not answer; see pm2 logs ice-servers --lines 50" ;;
esac
