// pm2 process file for ice-servers:  pm2 start deploy/ecosystem.config.js && pm2 save
// gunicorn runs its own workers, so pm2 keeps one process (fork mode) and restarts it if it dies.
// After a code or .env change: pm2 sendSignal SIGHUP ice-servers (gunicorn's graceful reload; a
// `pm2 restart` or `pm2 reload` of a fork-mode app stops it first and drops requests).
// Logs: `pm2 logs ice-servers`. Settings come from the repository's .env, read by the app itself.
const path = require("path");

const root = path.resolve(__dirname, "..");

module.exports = {
  apps: [
    {
      name: "ice-servers",
      cwd: root,
      script: path.join(root, ".venv/bin/gunicorn"),
      args: "-c gunicorn.conf.py wsgi:app",
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
      env: { PYTHONUNBUFFERED: "1" },
    },
  ],
};
