"""The station's own web page and HTTP API, served by the daemon (docs/web.md).

``station.web.server.WebServer`` runs in the daemon's event loop; ``station.web.live`` is the
push channel; ``station.web.data`` reads the store; the page is ``static/`` (plain HTML/JS,
uPlot vendored under ``static/vendor``)."""
