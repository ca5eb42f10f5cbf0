"""Command line: python -m minicnn predict | explain | serve | export | info

    python -m minicnn predict --model PATH IMAGE...       the top items each picture shows
    python -m minicnn explain --model PATH IMAGE... --out DIR   Grad-CAM and saliency pictures
    python -m minicnn serve --model PATH [--host H] [--port P]  the local demo page
    python -m minicnn export --model PATH OUT.onnx         the model as an ONNX file
    python -m minicnn info                                 which engine runs
"""
import argparse
import json
import sys


def main(argv=None):
    from minicnn import explain_cli, onnx_export
    from minicnn.predict import escape_unencodable_output
    from minicnn.serve import cli as serve_cli

    parser = argparse.ArgumentParser(prog="python -m minicnn", description="minicnn from the command line")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="say which Fashion-MNIST item each image shows (top 3)")
    predict.add_argument("--model", required=True, help="a model saved by model.save / examples/fashion_mnist.py")
    predict.add_argument("--top", type=int, default=3, help="how many items to list per image")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG photos or drawings")
    explain_cli.add_arguments(commands.add_parser("explain", help="pictures of why: Grad-CAM and saliency maps"))
    serve_cli.add_arguments(commands.add_parser("serve", help="the demo page: draw or drop a picture, see the answer"))
    onnx_export.add_arguments(commands.add_parser(
        "export", help='write a saved model (.npz or .keras) as an ONNX file (pip install "minicnn[onnx]")'))
    commands.add_parser("info", help="which engine runs, with its build flags and threads")
    escape_unencodable_output()
    args = parser.parse_args(argv)
    if args.command == "predict" and args.top < 1:
        parser.error("--top must be at least 1")
    if args.command == "explain":
        return explain_cli.run(args)
    if args.command == "serve":
        return serve_cli.run(args)
    if args.command == "export":
        return onnx_export.run(args)

    import minicnn

    if args.command == "info":
        print(json.dumps(minicnn.backend_info(), indent=2))
        return 0
    from minicnn.datasets.fashion_mnist import CLASS_NAMES
    from minicnn.predict import output_kind, predict_image_files

    try:
        model = minicnn.load_model(args.model, compile=False)   # only predicts: no optimizer
    except (OSError, ValueError) as error:
        print(f"error: cannot load the model {args.model}: {error}", file=sys.stderr)
        return 2
    try:
        output_kind(model, CLASS_NAMES)
    except ValueError as error:   # not made for 28x28x1 images or the ten Fashion-MNIST classes
        print(f"error: {args.model}: {error}", file=sys.stderr)
        return 2
    try:
        failures = predict_image_files(model, args.images, CLASS_NAMES, k=args.top)
    except (ImportError, ValueError) as error:  # no Pillow: no file can be read
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
