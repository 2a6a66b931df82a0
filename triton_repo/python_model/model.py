"""Triton python-backend model: runs one exported ONNX part with onnxruntime.

Copied verbatim into `<model>/1/model.py` by `triton_repo.build --flavor embedded`; the part's ONNX file(s) sit
next to it under their exported names (config parameter `onnx_file`).
Tensor names, dtypes and batching come from the model's config.pbtxt (rendered from the export manifest).
CUDA is used when onnxruntime offers it and a GPU is present; otherwise the CPU provider.
"""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _providers():
    has_gpu = os.path.exists("/dev/nvidiactl")
    if has_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.batching = int(config.get("max_batch_size", 0)) > 0
        self.inputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        onnx_file = config["parameters"]["onnx_file"]["string_value"]
        path = os.path.join(args["model_repository"], args["model_version"], onnx_file)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("ZOO_TRITON_ORT_THREADS", "0"))
        self.session = ort.InferenceSession(path, options, providers=_providers())

    def _read(self, request):
        arrays = {}
        for name, dtype in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"{self.name}: input {name!r} is missing")
            array = tensor.as_numpy()
            if array.size == 0:
                raise ValueError(f"{self.name}: input {name!r} is empty (shape {list(array.shape)}); "
                                 "send at least one patch/row")
            arrays[name] = array.astype(dtype, copy=False)
        return arrays

    def execute(self, requests):
        responses = [None] * len(requests)
        batch = []
        for i, request in enumerate(requests):
            try:
                arrays = self._read(request)
            except ValueError as err:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG))
                continue
            batch.append((i, arrays))
        # Batching models (the patch encoder) run the dynamically batched requests as one onnxruntime call.
        groups = [batch] if (self.batching and batch) else [[item] for item in batch]
        for group in groups:
            feed = {name: np.concatenate([arrays[name] for _, arrays in group]) if len(group) > 1
                    else group[0][1][name] for name, _ in self.inputs}
            try:
                results = self.session.run(self.outputs, feed)
            except Exception as err:  # onnxruntime reports shape/value errors as generic exceptions
                for i, _ in group:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(
                        f"{self.name}: onnxruntime rejected the request: {err}", pb_utils.TritonError.INVALID_ARG))
                continue
            offsets = np.cumsum([0] + [len(arrays[self.inputs[0][0]]) for _, arrays in group])
            for k, (i, _) in enumerate(group):
                pieces = [r[offsets[k]:offsets[k + 1]] if len(group) > 1 else r for r in results]
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(n, np.ascontiguousarray(p)) for n, p in zip(self.outputs, pieces)])
        return responses

    def finalize(self):
        self.session = None
