"""An ASGI app whose start-up fails: for the tests of how ``capserve serve`` exits."""


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "start-up fails on purpose"})


def create_app():
    return app
