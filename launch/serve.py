"""Serve a model: OpenAI-compatible chat completions and a web chat, continuously batched.

  python launch/serve.py --checkpoint CKPT [--template v1] [--host 127.0.0.1] [--port 8000]
      [--max-batch 8] [--max-queue 64] [--request-timeout 600] [--allow-local-images]
      [--devices 1]

POST /v1/chat/completions, GET /v1/models, GET /health; the web chat at http://HOST:PORT/.
"""

import argparse
import os

from sgv_jax import allocator
from sgv_jax.generation import prompts


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="sgv checkpoint directory")
    parser.add_argument("--template", choices=prompts.TEMPLATES,
                        help="prompt template (default: the checkpoint's, else v1)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=8, help="batch slots decoding together")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests waiting for a slot; beyond it the server answers 503")
    parser.add_argument("--request-timeout", type=float, default=600.0, help="seconds")
    parser.add_argument("--context", type=int, help="tokens per slot (default: the model's)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--allow-local-images", action="store_true",
                        help="accept image_url values that are paths on this machine")
    parser.add_argument("--devices", type=int, default=1,
                        help="split the batch slots over this many of the host's devices, "
                             "each with a copy of the weights (on CPU: XLA host devices, each "
                             "decoding on its own thread; 2 on a 2-core host raised "
                             "bench_serve.py's 32-client tokens/s by about a quarter)")
    parser.add_argument("--no-web-chat", action="store_true", help="API only")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    if args.devices > 1:  # on CPU, the host devices must exist before JAX starts its backend
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_"
                                   f"platform_device_count={args.devices}").strip()
    from sgv_jax.serve.app import serve

    serve(args.checkpoint, template=args.template, host=args.host, port=args.port,
          max_batch=args.max_batch, max_queue=args.max_queue,
          request_timeout=args.request_timeout, context=args.context, dtype=args.dtype,
          allow_local_images=args.allow_local_images, web_chat=not args.no_web_chat,
          devices=args.devices)


if __name__ == "__main__":
    allocator.reexec_under_tcmalloc()  # before any work: see sgv_jax/allocator.py
    main()
