// The U-Net of core/nn/unet.h as a standard ONNX graph, both ways, through
// the ONNX library's generated protobuf classes (Debian's libonnx-dev).
//
// Export (opset 17): input "field" and output "chi", float32 [1, 1, D, H, W]
// in ppm with D, H, W symbolic (multiples of the side multiple). Our NDHWC
// activations with one channel are NCDHW's bytes, so (D, H, W) = (z, y, x)
// as everywhere in deepqsm. Per layer, as UNet::forward runs it at inference
// (dropout is the identity there and is left out):
//   encoder level i:  Conv(k3, pads 1) Relu Conv Relu [MaxPool(k2, s2)]
//   decoder level i:  ConvTranspose(k2, s2) Relu Concat(axis 1: [up, skip])
//                     Conv Relu Conv Relu
//   head:             Conv(k1 or k3), then Add(head, field) when residual
// Weights go in as initializers named after our parameters ("enc0.conv0.w"),
// permuted to ONNX's layouts: Conv (Co, Ci, k, k, k), ConvTranspose
// (Ci, Co, 2, 2, 2). Every written file passes onnx::checker.
//
// Import reads such a graph back, whoever wrote it (this exporter, or
// torch.onnx.export of the same layers: any node and value names, weights as
// initializers, Constant nodes or through Identity, raw or typed data,
// Identity and inference Dropout nodes passed through). Anything else fails
// in one line naming the file and the first node that cannot be mapped.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "core/nn/tensor.h"
#include "core/nn/unet.h"

namespace dq {

using OnnxMetadata = std::vector<std::pair<std::string, std::string>>;

constexpr int kOnnxOpset = 17;

// Writes net's weights (host params, layout of UNet(model).layout()) to
// path, whole or not at all, with metadata as the model's metadata_props.
// Fails when the built model does not pass onnx::checker.
void write_unet_onnx(const std::string& path, const UNetConfig& model, const Tensor& params,
                     const OnnxMetadata& metadata);

struct OnnxUNet {
  UNetConfig model;  // dropout 0: the graph has none
  Tensor params;     // host, layout of UNet(model).layout()
  OnnxMetadata metadata;
};

OnnxUNet read_unet_onnx(const std::string& path);

}  // namespace dq
