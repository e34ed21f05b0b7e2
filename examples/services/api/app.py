"""The example API service."""
from http.server import BaseHTTPRequestHandler, HTTPServer


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"hello from api\n")


if __name__ == "__main__":
    HTTPServer(("127.0.0.1", 8080), Hello).serve_forever()
