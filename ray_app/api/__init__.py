"""The HTTP front door: a FastAPI application (``app``) over the job service, its API keys
(``keys``), the web page (``static/index.html``) and the Ray Serve deployment
(``deployment``: the only module here that imports Ray).
"""
