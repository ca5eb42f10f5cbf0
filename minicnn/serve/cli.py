"""python -m minicnn serve --model M [--host 127.0.0.1] [--port 8000]: the demo page."""
import signal
import sys
import threading

import minicnn

from .server import make_server


def add_arguments(parser):
    """Add the serve command's arguments to an argparse (sub)parser."""
    parser.add_argument("--model", required=True, help="a model saved by model.save / examples/fashion_mnist.py")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")


def _port(text):
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, received {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, received {value}")
    return value


def run(args, out=None, err=None):
    """Serve until interrupted (Ctrl+C); returns the exit status (0, or 2 when it cannot start)."""
    out = sys.stdout if out is None else out     # looked up now: the caller may have replaced them
    err = sys.stderr if err is None else err
    try:
        model = minicnn.load_model(args.model, compile=False)
    except (OSError, ValueError) as error:
        print(f"error: cannot load the model {args.model}: {error}", file=err)
        return 2
    try:
        import PIL  # noqa: F401  (every request needs it: say so now, not at the first picture)
    except ImportError:
        print('error: the page reads pictures with Pillow: pip install "minicnn[serve]"', file=err)
        return 2
    try:
        server = make_server(model, args.host, args.port, quiet=args.quiet)
    except ValueError as error:
        print(f"error: {args.model}: {error}", file=err)
        return 2
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error}", file=err)
        return 2
    if not server.is_loopback():
        print(f"warning: listening on {args.host}: anyone who can reach this machine can use the page "
              f"(it has no password)", file=err)
    print(f"minicnn serve: {server.url} (Ctrl+C to stop)", file=out, flush=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)     # `kill` stops it as cleanly as Ctrl+C
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _stop(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    """Stand-alone entry point (the same command as `python -m minicnn serve`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m minicnn serve", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
