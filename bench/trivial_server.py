"""The framework ceiling: a trivial twisted.web POST resource on the same reactor as twistd."""

import sys

from twisted.internet import endpoints, reactor
from twisted.web import resource, server


class Echo(resource.Resource):
    isLeaf = True

    def render_POST(self, request):
        request.content.read()
        request.setHeader(b"Content-Type", b"text/plain")
        return b"ok"


site = server.Site(Echo())
site.log = lambda request: None
endpoints.serverFromString(reactor, f"tcp:{sys.argv[1]}:interface=127.0.0.1").listen(site)
reactor.run()
