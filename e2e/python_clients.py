#!/usr/bin/env python3
"""The inference server and the dispatcher as the Python clients people use see them.

- An upload over the body limit gets its 413 JSON answer in urllib and requests (which write
  the whole body before reading anything), not a BrokenPipeError.
- NVIDIA's tritonclient (the common client of the Open Inference Protocol) reads server and
  model metadata, and infers with JSON tensors, which it sends with no Content-Type; the
  tensor names are the ONNX file's.

Run by e2e/tests/clients.rs against servers it starts; exits non-zero on the first failure.
"""

import argparse
import json
import urllib.error
import urllib.request

import numpy as np
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException


def check(condition, message):
    if not condition:
        raise SystemExit(f"FAIL: {message}")


def oversized_uploads_get_413(url, limit):
    body = b"\xff" * (3 * limit)
    request = urllib.request.Request(
        f"{url}/v1/classify", data=body, headers={"Content-Type": "image/jpeg"}
    )
    try:
        urllib.request.urlopen(request, timeout=30)
        raise SystemExit(f"FAIL: {url}: urllib upload of {len(body)} bytes was accepted")
    except urllib.error.HTTPError as error:
        check(error.code == 413, f"{url}: urllib got {error.code}, expected 413")
        message = json.loads(error.read())["error"]
        check(str(limit) in message, f"{url}: the 413 names the limit: {message}")
    answer = requests.post(
        f"{url}/v1/classify", data=body, headers={"Content-Type": "image/jpeg"}, timeout=30
    )
    check(answer.status_code == 413, f"{url}: requests got {answer.status_code}")
    # A body of unknown length goes chunked: refused once it passes the limit.
    chunks = (b"\xff" * 65536 for _ in range(3 * limit // 65536 + 1))
    answer = requests.post(
        f"{url}/v1/classify", data=chunks, headers={"Content-Type": "image/jpeg"}, timeout=30
    )
    check(answer.status_code == 413, f"{url}: chunked upload got {answer.status_code}")
    check("error" in answer.json(), f"{url}: chunked 413 is JSON: {answer.text}")


def tritonclient_infers_with_json_tensors(url, model):
    host = url.removeprefix("http://")
    client = triton.InferenceServerClient(host)
    check(client.is_server_live() and client.is_server_ready(), f"{url}: live and ready")
    check(client.is_model_ready(model), f"{url}: model {model} ready")
    server = client.get_server_metadata()
    check(server["extensions"] == [], f"{url}: no extensions claimed: {server}")
    metadata = client.get_model_metadata(model)
    inputs = {i["name"]: i for i in metadata["inputs"]}
    outputs = [o["name"] for o in metadata["outputs"]]
    check("input" in inputs, f"{url}: the ONNX input name: {metadata}")
    check(outputs == ["logits"], f"{url}: the ONNX output name: {metadata}")
    size = inputs["input"]["shape"][-1]
    batch = np.random.default_rng(7).standard_normal((1, 3, size, size), dtype=np.float32)
    tensor = triton.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=False)
    wanted = triton.InferRequestedOutput("logits", binary_data=False)
    result = client.infer(model, [tensor], outputs=[wanted], request_id="py-1")
    logits = result.as_numpy("logits")
    check(logits is not None and logits.shape == (1, 10), f"{url}: logits {logits}")
    check(result.get_response()["id"] == "py-1", f"{url}: request id echoed")
    # The same tensors as plain JSON with `; charset`: the same answer.
    document = {"inputs": [{"name": "input", "shape": list(batch.shape), "datatype": "FP32",
                            "data": batch.ravel().tolist()}]}
    answer = requests.post(
        f"{url}/v2/models/{model}/infer", data=json.dumps(document),
        headers={"Content-Type": "application/json; charset=utf-8"}, timeout=60,
    )
    check(answer.status_code == 200, f"{url}: JSON with charset: {answer.text}")
    plain = np.array(answer.json()["outputs"][0]["data"], dtype=np.float32)
    check(np.allclose(plain.reshape(logits.shape), logits, atol=1e-4), f"{url}: same logits")
    # What is not implemented says so.
    tensor.set_data_from_numpy(batch, binary_data=True)
    try:
        client.infer(model, [tensor])
        raise SystemExit(f"FAIL: {url}: binary tensors were accepted")
    except InferenceServerException as error:
        check("binary" in str(error) and error.status() == "415", f"{url}: {error}")
    answer = requests.post(f"{url}/v2/models/{model}/infer", data="x=1",
                           headers={"Content-Type": "text/plain"}, timeout=10)
    check(answer.status_code == 415, f"{url}: text/plain got {answer.status_code}")
    client.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", action="append", required=True,
                        help="a server to check (inference or dispatcher); repeatable")
    parser.add_argument("--model", required=True, help="model name served at every --url")
    parser.add_argument("--limit", type=int, required=True, help="the servers' --max-body-bytes")
    args = parser.parse_args()
    for url in args.url:
        oversized_uploads_get_413(url, args.limit)
        tritonclient_infers_with_json_tensors(url, args.model)
        print(f"ok {url}")


if __name__ == "__main__":
    main()
