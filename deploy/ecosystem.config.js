// pm2 process file for ice-servers. deploy/deploy.sh starts it with ICE_APP_DIR (its APP_DIR) and
// ICE_APP_USER set: pm2 then runs the release APP_DIR/current points to, as that user, reading
// APP_DIR/.env. Without them (`pm2 start deploy/ecosystem.config.js` in a checkout) it runs the checkout.
// gunicorn runs its own workers, so pm2 keeps one process (fork mode) and restarts it if it dies.
// After a .env change: pm2 sendSignal SIGHUP ice-servers (gunicorn's graceful reload; a `pm2 restart`
// or `pm2 reload` of a fork-mode app stops it first and drops requests).
// Logs: `pm2 logs ice-servers`.
const path = require("path");

const appDir = process.env.ICE_APP_DIR;
// Through the `current` link, not a resolved path: a reload's new workers import the release it points to then.
const root = appDir ? path.join(appDir, "current") : path.resolve(__dirname, "..");
const user = process.env.ICE_APP_USER;

module.exports = {
  apps: [
    {
      name: "ice-servers",
      cwd: root,
      script: path.join(root, ".venv/bin/python"),
      args: `-m gunicorn -c gunicorn.conf.py --chdir ${root} wsgi:app`,
      interpreter: "none",
      exec_mode: "fork",
      instances: 1,
      autorestart: true,
      // Back off when it keeps dying (a bad setting in .env exits at once with one line in the log).
      exp_backoff_restart_delay: 1000,
      max_restarts: 10,
      min_uptime: "10s",
      // SIGTERM is gunicorn's graceful stop; give it longer than graceful_timeout (20 s).
      kill_signal: "SIGTERM",
      kill_timeout: 25000,
      merge_logs: true,
      time: true,
      env: { PYTHONUNBUFFERED: "1", ...(appDir ? { ICE_ENV_FILE: path.join(appDir, ".env") } : {}) },
      // A user of its own, never the web server's (pm2's daemon runs as root to start it so).
      ...(user && process.getuid && process.getuid() === 0 ? { uid: user, gid: user } : {}),
    },
  ],
};
