"""A stand-in for ComfyUI's server, for comfix's hermetic tests.

It speaks the parts of ComfyUI's protocol that `comfix test` uses, as ComfyUI's `server.py` and
`execution.py` (0.3.x) do: `GET /system_stats`, `/object_info`, `/object_info/{class}`,
`POST /prompt` (validation with `node_errors`), `/history/{id}`, `/view`, `POST /interrupt` and the
`/ws` websocket (`status`, `execution_start`, `executing`, `progress`, `executed`,
`execution_error`, `execution_interrupted`, `execution_success`). Nodes are Python classes with
`INPUT_TYPES`, `RETURN_TYPES`, `FUNCTION`, `OUTPUT_NODE`; custom nodes are loaded from
`custom_nodes/*/__init__.py`'s `NODE_CLASS_MAPPINGS`, as ComfyUI loads them. Model folders are
`models/<folder>` beside this file plus the folders `extra_model_paths.yaml` names.

Standard library only: it runs with any python3.
"""

import argparse
import base64
import hashlib
import importlib.util
import json
import os
import queue
import struct
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.realpath(__file__))
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")


# ----- folders ---------------------------------------------------------------------------------

FOLDERS = {}


def add_folder(name, path):
    FOLDERS.setdefault(name, [])
    if path not in FOLDERS[name]:
        FOLDERS[name].append(path)


def load_extra_model_paths(path):
    """Our own writer's format: `key: "json string"` lines under one top-level section."""
    base = None
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.startswith(" "):
                continue
            key, _, value = line.strip().partition(": ")
            key = json.loads(key) if key.startswith('"') else key
            value = value.strip()
            if key == "is_default":
                continue
            value = json.loads(value) if value.startswith('"') else value
            if key == "base_path":
                base = value
            else:
                add_folder(key, os.path.join(base or HERE, value))


def filenames(folder):
    out = []
    for root in FOLDERS.get(folder, []):
        if not os.path.isdir(root):
            continue
        for dirpath, _, files in os.walk(root, followlinks=True):
            for name in files:
                if name.endswith(MODEL_EXTENSIONS):
                    rel = os.path.relpath(os.path.join(dirpath, name), root)
                    out.append(rel.replace(os.sep, "/"))
    return sorted(set(out))


def full_path(folder, name):
    for root in FOLDERS.get(folder, []):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    return None


# ----- nodes -----------------------------------------------------------------------------------

INTERRUPTED = threading.Event()


class Interrupted(Exception):
    pass


class Image:
    def __init__(self, width, height, rgb):
        self.width, self.height, self.rgb = width, height, rgb


def png(image):
    raw = b"".join(
        b"\x00" + image.rgb[y * image.width * 3:(y + 1) * image.width * 3]
        for y in range(image.height)
    )

    def chunk(tag, data):
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", image.width, image.height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


class CheckpointLoaderSimple:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (filenames("checkpoints"), {"tooltip": "checkpoint"})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"
    CATEGORY = "loaders"

    def load_checkpoint(self, ckpt_name):
        with open(full_path("checkpoints", ckpt_name), "rb") as f:
            data = f.read()
        return (data, data, data)


class EmptyImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "width": ("INT", {"default": 8, "min": 1, "max": 256}),
            "height": ("INT", {"default": 8, "min": 1, "max": 256}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 4}),
            "color": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFF}),
        }}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "generate"
    CATEGORY = "image"

    def generate(self, width, height, batch_size, color):
        pixel = bytes([(color >> 16) & 255, (color >> 8) & 255, color & 255])
        return ([Image(width, height, pixel * (width * height)) for _ in range(batch_size)],)


class ModelNoise:
    """An image made from a model's bytes: shows the model file reached the node."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "seed": ("INT", {"default": 0, "control_after_generate": True})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "noise"
    CATEGORY = "sampling"

    def noise(self, model, seed):
        size = 4
        digest = hashlib.sha256(model + str(seed).encode()).digest()
        return ([Image(size, size, (digest * 2)[: size * size * 3])],)


class Sleep:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "seconds": ("FLOAT", {"default": 1.0})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "sleep"
    CATEGORY = "utils"

    def sleep(self, images, seconds, _progress=None):
        steps = max(1, int(seconds * 20))
        for step in range(steps):
            if INTERRUPTED.is_set():
                raise Interrupted()
            time.sleep(seconds / steps)
            if _progress:
                _progress(step + 1, steps)
        return (images,)


class RaiseError:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "message": ("STRING", {"default": "boom"})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "fail"
    CATEGORY = "utils"

    def fail(self, images, message):
        raise RuntimeError(message)


class LoadImage:
    """An input image by name (ComfyUI's `LoadImage`, which lists the input folder's files): a
    picture made from the file's bytes, so what comes out shows which bytes went in."""

    @classmethod
    def INPUT_TYPES(cls):
        os.makedirs(INPUT_DIR, exist_ok=True)
        files = sorted(f for f in os.listdir(INPUT_DIR) if not f.startswith("."))
        return {"required": {"image": (files, {"image_upload": True})}}

    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"
    CATEGORY = "image"

    def load_image(self, image):
        with open(os.path.join(INPUT_DIR, image), "rb") as f:
            digest = hashlib.sha256(f.read()).digest()
        return ([Image(4, 4, (digest * 2)[:48])], None)


class Crash:
    """The server process dies while running it (a segfault, the OOM killer)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}, "optional": {"fatal": ("BOOLEAN", {"default": False})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "crash"
    CATEGORY = "utils"

    def crash(self, images, fatal=False):
        if fatal:
            # A damage that outlives the process: the server no longer starts.
            open(os.path.join(OUTPUT_DIR, ".broken"), "w").close()
        print("Crash: the process dies now", flush=True)
        os._exit(3)


class SaveImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}}

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"

    def save_images(self, images, filename_prefix):
        results = []
        os.makedirs(OUTPUT_DIR, exist_ok=True)
        for image in images:
            counter = 1
            while os.path.exists(os.path.join(OUTPUT_DIR, f"{filename_prefix}_{counter:05}_.png")):
                counter += 1
            name = f"{filename_prefix}_{counter:05}_.png"
            with open(os.path.join(OUTPUT_DIR, name), "wb") as f:
                f.write(png(image))
            results.append({"filename": name, "subfolder": "", "type": "output"})
        return {"ui": {"images": results}}


NODE_CLASS_MAPPINGS = {
    "CheckpointLoaderSimple": CheckpointLoaderSimple,
    "EmptyImage": EmptyImage,
    "ModelNoise": ModelNoise,
    "Sleep": Sleep,
    "RaiseError": RaiseError,
    "SaveImage": SaveImage,
    "LoadImage": LoadImage,
    "Crash": Crash,
}


def load_custom_nodes():
    root = os.path.join(HERE, "custom_nodes")
    if not os.path.isdir(root):
        return
    for name in sorted(os.listdir(root)):
        init = os.path.join(root, name, "__init__.py")
        if name.startswith(".") or not os.path.isfile(init):
            continue
        try:
            spec = importlib.util.spec_from_file_location(name.replace("-", "_"), init)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            NODE_CLASS_MAPPINGS.update(getattr(module, "NODE_CLASS_MAPPINGS", {}))
            print(f"Import times for custom nodes:\n   0.0 seconds: {os.path.join(root, name)}", flush=True)
        except Exception:
            print(f"Cannot import {os.path.join(root, name)} module for custom nodes:", flush=True)
            traceback.print_exc()


def node_info(name):
    cls = NODE_CLASS_MAPPINGS[name]
    inputs = cls.INPUT_TYPES()
    return {
        "input": inputs,
        "input_order": {k: list(v.keys()) for k, v in inputs.items()},
        "output": list(cls.RETURN_TYPES),
        "output_is_list": [False] * len(cls.RETURN_TYPES),
        "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
        "name": name,
        "display_name": name,
        "description": "",
        "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
    }


# ----- the queue and execution -----------------------------------------------------------------

SOCKETS = {}
SOCKETS_LOCK = threading.Lock()
HISTORY = {}
QUEUE = queue.Queue()
STATE = {"number": 0, "client_id": None}


def send(event, data, sid=None):
    message = json.dumps({"type": event, "data": data}).encode()
    with SOCKETS_LOCK:
        targets = [SOCKETS[sid]] if sid in SOCKETS else ([] if sid else list(SOCKETS.values()))
    for ws in filter(None, targets):
        ws.send_text(message)


def validate(prompt):
    """`execution.validate_prompt`: (ok, error, outputs, node_errors)."""
    for node_id, node in prompt.items():
        if "class_type" not in node:
            return (False, {"type": "invalid_prompt", "message": "Cannot execute because a node is missing the class_type property.",
                            "details": f"Node ID '#{node_id}'", "extra_info": {}}, [], {})
        if node["class_type"] not in NODE_CLASS_MAPPINGS:
            return (False, {"type": "invalid_prompt", "message": f"Cannot execute because node {node['class_type']} does not exist.",
                            "details": f"Node ID '#{node_id}'", "extra_info": {}}, [], {})
    outputs = [i for i, n in prompt.items() if getattr(NODE_CLASS_MAPPINGS[n["class_type"]], "OUTPUT_NODE", False)]
    if not outputs:
        return (False, {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}}, [], {})
    node_errors = {}
    for node_id, node in prompt.items():
        required = NODE_CLASS_MAPPINGS[node["class_type"]].INPUT_TYPES().get("required", {})
        errors = []
        for name, spec in required.items():
            value = node.get("inputs", {}).get(name)
            if value is None:
                errors.append({"type": "required_input_missing", "message": "Required input is missing",
                               "details": name, "extra_info": {"input_name": name}})
            elif isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                if value[0] not in prompt:
                    errors.append({"type": "exception_during_inner_validation", "message": "Exception when validating inner node",
                                   "details": f"'{value[0]}'", "extra_info": {"input_name": name}})
            elif isinstance(spec[0], list) and value not in spec[0]:
                errors.append({"type": "value_not_in_list", "message": "Value not in list",
                               "details": f"{name}: '{value}' not in {spec[0]}", "extra_info": {"input_name": name}})
        if errors:
            node_errors[node_id] = {"errors": errors, "dependent_outputs": outputs, "class_type": node["class_type"]}
    if node_errors:
        return (False, {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                        "details": "", "extra_info": {}}, outputs, node_errors)
    return (True, None, outputs, {})


def execute(prompt_id, prompt, outputs, client_id):
    messages = []

    def add(event, data, broadcast=False):
        messages.append([event, data])
        send(event, data, None if broadcast else client_id)

    add("execution_start", {"prompt_id": prompt_id})
    results, ui_outputs = {}, {}
    INTERRUPTED.clear()

    def run(node_id):
        if node_id in results:
            return results[node_id]
        node = prompt[node_id]
        cls = NODE_CLASS_MAPPINGS[node["class_type"]]
        kwargs = {}
        for name, value in node.get("inputs", {}).items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                kwargs[name] = run(value[0])[value[1]]
            else:
                kwargs[name] = value
        send("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}, client_id)
        function = getattr(cls(), cls.FUNCTION)
        if cls is Sleep:
            kwargs["_progress"] = lambda v, m: send("progress", {"value": v, "max": m, "prompt_id": prompt_id, "node": node_id}, client_id)
        try:
            out = function(**kwargs)
        except Interrupted:
            raise
        except Exception as e:
            raise NodeFailure(node_id, e, traceback.format_exc())
        if isinstance(out, dict):
            ui_outputs[node_id] = out["ui"]
            send("executed", {"node": node_id, "display_node": node_id, "output": out["ui"], "prompt_id": prompt_id}, client_id)
            out = out.get("result", ())
        results[node_id] = out
        return out

    status = "success"
    try:
        for node_id in outputs:
            run(node_id)
        add("execution_success", {"prompt_id": prompt_id})
    except Interrupted:
        status = "error"
        add("execution_interrupted", {"prompt_id": prompt_id, "node_id": None, "node_type": None, "executed": list(results)}, broadcast=True)
    except NodeFailure as failure:
        status = "error"
        add("execution_error", {
            "prompt_id": prompt_id, "node_id": failure.node_id, "node_type": prompt[failure.node_id]["class_type"],
            "executed": list(results), "exception_message": str(failure.error),
            "exception_type": type(failure.error).__name__, "traceback": failure.trace.splitlines(),
            "current_inputs": {}, "current_outputs": list(results)})
    HISTORY[prompt_id] = {
        "prompt": [0, prompt_id, prompt, {"client_id": client_id}, outputs],
        "outputs": ui_outputs,
        "status": {"status_str": status, "completed": status == "success", "messages": messages},
        "meta": {k: {"node_id": k, "display_node": k} for k in ui_outputs},
    }
    send("executing", {"node": None, "prompt_id": prompt_id}, client_id)


class NodeFailure(Exception):
    def __init__(self, node_id, error, trace):
        self.node_id, self.error, self.trace = node_id, error, trace


def worker():
    while True:
        prompt_id, prompt, outputs, client_id = QUEUE.get()
        STATE["running"] = prompt_id
        execute(prompt_id, prompt, outputs, client_id)
        STATE["running"] = None


# ----- HTTP and the websocket ------------------------------------------------------------------

class Socket:
    def __init__(self, handler):
        self.handler, self.lock = handler, threading.Lock()

    def send_text(self, payload):
        header = bytes([0x81])
        n = len(payload)
        if n < 126:
            header += bytes([n])
        elif n < 65536:
            header += bytes([126]) + struct.pack(">H", n)
        else:
            header += bytes([127]) + struct.pack(">Q", n)
        # As ComfyUI's `send_json`: a client that went away is not the worker's problem (a
        # socket whose handler finished has a closed file: ValueError, not OSError).
        try:
            with self.lock:
                self.handler.wfile.write(header + payload)
                self.handler.wfile.flush()
        except (OSError, ValueError):
            pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body, content_type="application/json"):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/ws":
            return self.websocket(query.get("clientId") or uuid.uuid4().hex)
        if url.path == "/system_stats":
            return self.reply(200, {"system": {"os": os.name, "python_version": sys.version, "comfyui_version": "0.3.64-standin",
                                               "embedded_python": False, "argv": sys.argv},
                                    "devices": [{"name": "cpu", "type": "cpu", "index": None}]})
        if url.path == "/object_info":
            return self.reply(200, {name: node_info(name) for name in NODE_CLASS_MAPPINGS})
        if url.path.startswith("/object_info/"):
            name = urllib.parse.unquote(url.path[len("/object_info/"):])
            return self.reply(200, {name: node_info(name)} if name in NODE_CLASS_MAPPINGS else {})
        if url.path.startswith("/history/"):
            prompt_id = url.path[len("/history/"):]
            return self.reply(200, {prompt_id: HISTORY[prompt_id]} if prompt_id in HISTORY else {})
        if url.path == "/view":
            name = query.get("filename", "")
            if not name or name.startswith("/") or ".." in name or ".." in query.get("subfolder", ""):
                return self.reply(400, b"", "text/plain")
            path = os.path.join(OUTPUT_DIR, query.get("subfolder", ""), os.path.basename(name))
            if not os.path.isfile(path):
                return self.reply(404, b"", "text/plain")
            with open(path, "rb") as f:
                return self.reply(200, f.read(), "image/png")
        return self.reply(404, b"404: Not Found", "text/plain")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path == "/interrupt":
            INTERRUPTED.set()
            return self.reply(200, b"", "text/plain")
        if self.path != "/prompt":
            return self.reply(404, b"404: Not Found", "text/plain")
        print("got prompt", flush=True)
        data = json.loads(body)
        if "prompt" not in data:
            return self.reply(400, {"error": {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                                              "extra_info": {}}, "node_errors": {}})
        prompt = data["prompt"]
        prompt_id = str(data.get("prompt_id", uuid.uuid4()))
        ok, error, outputs, node_errors = validate(prompt)
        if not ok:
            print(f"invalid prompt: {error}", flush=True)
            return self.reply(400, {"error": error, "node_errors": node_errors})
        STATE["number"] += 1
        QUEUE.put((prompt_id, prompt, outputs, data.get("client_id")))
        return self.reply(200, {"prompt_id": prompt_id, "number": STATE["number"], "node_errors": {}})

    def websocket(self, sid):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        ws = Socket(self)
        # Test knobs for a websocket that loses events: `late` registers the client a while
        # after its handshake (as ComfyUI's own handler may, under load), `mute` never
        # delivers a prompt's events at all.
        mode = os.environ.get("STANDIN_WS", "")
        if mode == "late":
            time.sleep(0.5)
        with SOCKETS_LOCK:
            SOCKETS[sid] = None if mode == "mute" else ws
        ws.send_text(json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": QUEUE.qsize()}}, "sid": sid}}).encode())
        try:
            while True:
                head = self.rfile.read(2)
                if len(head) < 2:
                    break
                opcode, n = head[0] & 15, head[1] & 127
                if n == 126:
                    n = struct.unpack(">H", self.rfile.read(2))[0]
                elif n == 127:
                    n = struct.unpack(">Q", self.rfile.read(8))[0]
                mask = self.rfile.read(4) if head[1] & 128 else b""
                self.rfile.read(n)
                if opcode == 8:
                    with ws.lock:
                        self.wfile.write(b"\x88\x00")
                    break
        except OSError:
            pass
        finally:
            with SOCKETS_LOCK:
                if SOCKETS.get(sid) is ws:
                    del SOCKETS[sid]
        self.close_connection = True


def main():
    global OUTPUT_DIR, INPUT_DIR
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--quick-test-for-ci", action="store_true")
    parser.add_argument("--extra-model-paths-config", action="append", default=[])
    parser.add_argument("--output-directory")
    parser.add_argument("--input-directory")
    args, _ = parser.parse_known_args()

    for folder in ("checkpoints", "loras", "vae", "unet", "clip", "diffusion_models", "text_encoders"):
        add_folder(folder, os.path.join(HERE, "models", folder))
    own = os.path.join(HERE, "extra_model_paths.yaml")
    for config in ([own] if os.path.isfile(own) else []) + args.extra_model_paths_config:
        load_extra_model_paths(config)
    OUTPUT_DIR = os.path.realpath(args.output_directory or os.path.join(HERE, "output"))
    INPUT_DIR = os.path.realpath(args.input_directory or os.path.join(HERE, "input"))
    if os.path.exists(os.path.join(OUTPUT_DIR, ".broken")):
        print("the server is broken (a fatal Crash ran): it does not start", flush=True)
        return 1
    load_custom_nodes()
    if args.quick_test_for_ci:
        return 0
    threading.Thread(target=worker, daemon=True).start()
    server = ThreadingHTTPServer((args.listen, args.port), Handler)
    server.daemon_threads = True
    print("argv: " + " ".join(sys.argv[1:]), flush=True)
    print("Starting server\n", flush=True)
    print(f"To see the GUI go to: http://{args.listen}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nStopped server", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
