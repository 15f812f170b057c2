"""AWS Lambda's handler: API Gateway REST and HTTP API, function URL and ALB events to the WSGI app, through apig-wsgi.

apig-wsgi builds the WSGI request. The client's address is set here, from what API Gateway saw
(an event's ``sourceIp``), never from a header the client wrote: apig-wsgi takes the first
X-Forwarded-For entry on REST and ALB events, which anyone can forge. Behind an ALB there is no
source address in the event; the ALB appends the address it saw to X-Forwarded-For (its default,
``append`` mode), so that last entry is the peer, and the app's TrustedProxies walks further left
only through ICE_TRUSTED_PROXIES, as behind nginx.
"""

from __future__ import annotations


def lambda_handler_for(wsgi_app):
    """Return a Lambda handler, ``handler(event, context)``, that serves ``wsgi_app``; apig-wsgi is imported on its first event."""
    handler = None

    def lambda_handler(event, context):
        nonlocal handler
        if handler is None:  # servers import wsgi.py too: they never load apig-wsgi
            from apig_wsgi import make_lambda_handler

            handler = make_lambda_handler(SourceAddress(wsgi_app))
        return handler(event, context)

    return lambda_handler


class SourceAddress:
    """WSGI middleware: REMOTE_ADDR from the event's source address (an ALB's: its X-Forwarded-For entry)."""

    def __init__(self, wsgi_app):
        """Wrap ``wsgi_app``."""
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        """Set REMOTE_ADDR (empty when the event names none: never loopback, which is a trusted proxy)."""
        context = environ.get("apig_wsgi.request_context")
        context = context if isinstance(context, dict) else {}
        if "elb" in context:
            hops = [hop.strip() for hop in environ.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
            environ["REMOTE_ADDR"] = hops.pop() if hops else ""
            if hops:
                environ["HTTP_X_FORWARDED_FOR"] = ", ".join(hops)
            else:
                environ.pop("HTTP_X_FORWARDED_FOR", None)
        else:
            # HTTP API (2.0) and function URLs: requestContext.http; REST (1.0): requestContext.identity.
            source = context.get("http") if "http" in context else context.get("identity")
            address = source.get("sourceIp") if isinstance(source, dict) else None
            environ["REMOTE_ADDR"] = address if isinstance(address, str) else ""
        return self.wsgi_app(environ, start_response)
