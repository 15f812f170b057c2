"""Entry points: ``app`` for WSGI servers (``gunicorn -c gunicorn.conf.py wsgi:app``, Vercel) and ``lambda_handler`` for AWS Lambda."""

from app import create_app
from app.web.aws_lambda import lambda_handler_for

app = create_app()
lambda_handler = lambda_handler_for(app)
