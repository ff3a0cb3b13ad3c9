"""Ways to form a 3x3 convolution's weight gradient, timed against TensorFlow's kernel
(`Conv2DBackpropFilter`, oneDNN's where it is on) and the forward convolution of the same
FLOPs, at one shape and dtype.

    python benchmarks/weight_gradient.py N H C_IN C_OUT [--dtype bfloat16] [--runs 7]
        [--intra-op-threads T]

x is N x H x H x C_IN (NHWC), the output gradient dy N x H x H x C_OUT, stride 1, SAME padding;
the weight gradient is dW[i, j, c, o] = sum over n, h, w of x_padded[n, h + i, w + j, c] *
dy[n, h, w, o]. Formed as: the kernel; 9 shifted slices of the padded x, each a matrix product
with dy (N*H*H x C_IN transposed times N*H*H x C_OUT); the 3 column shifts of the padded x side
by side as 3 * C_IN channels, then one matrix product per row shift (3 products, each of 3 *
C_IN rows); `extract_patches` then one matrix product; the batch as channels (a forward VALID
convolution of x transposed to C_IN x H+2 x H+2 x N with dy transposed to H x H x N x C_OUT);
the kernel on x and dy transposed to NCHW (the transposes timed with it); the 3D kernel
(`Conv3DBackpropFilterV2`) on a depth of 1; the kernel on each half of the batch, the two
summed (two ops the inter-op pool runs at once). Prints each one's median milliseconds, GFLOP/s
(2 N H^2 C_IN C_OUT 9 FLOPs) and largest difference from the kernel's result, relative to its
largest value. Examples, the box head and mask head of SpineNet-49 Mask R-CNN at 640, batch 2:
`1024 7 256 256`, `256 14 256 256`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("n", "h", "c_in", "c_out"):
        parser.add_argument(name, type=int)
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--intra-op-threads", type=int, default=0, help="threads per op (0: TensorFlow's default)"
    )
    args = parser.parse_args()

    import maskspine  # noqa: F401  (before TensorFlow: oneDNN's kernels, as maskspine runs)

    # isort: split
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    n, h, c_in, c_out = args.n, args.h, args.c_in, args.c_out
    dtype = tf.as_dtype(args.dtype)
    x = tf.cast(tf.random.stateless_normal([n, h, h, c_in], seed=[1, 2]), dtype)
    dy = tf.cast(tf.random.stateless_normal([n, h, h, c_out], seed=[3, 4]), dtype)
    w = tf.cast(tf.random.stateless_normal([3, 3, c_in, c_out], seed=[5, 6]), dtype)

    @tf.function
    def forward(x, w):
        return tf.nn.conv2d(x, w, 1, "SAME")

    def backprop_filter(x, dy, data_format="NHWC"):
        return tf.raw_ops.Conv2DBackpropFilter(
            input=x,
            filter_sizes=[3, 3, c_in, c_out],
            out_backprop=dy,
            strides=[1, 1, 1, 1],
            padding="SAME",
            data_format=data_format,
        )

    @tf.function
    def kernel(x, dy):
        return backprop_filter(x, dy)

    @tf.function
    def shifted_products(x, dy):
        padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        rows = tf.reshape(dy, [-1, c_out])
        parts = [
            tf.matmul(tf.reshape(padded[:, i : i + h, j : j + h, :], [-1, c_in]), rows, True)
            for i in range(3)
            for j in range(3)
        ]
        return tf.reshape(tf.stack(parts), [3, 3, c_in, c_out])

    @tf.function
    def column_products(x, dy):
        padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        columns = tf.concat([padded[:, :, j : j + h, :] for j in range(3)], axis=-1)
        rows = tf.reshape(dy, [-1, c_out])
        parts = [
            tf.matmul(tf.reshape(columns[:, i : i + h], [-1, 3 * c_in]), rows, True)
            for i in range(3)
        ]
        return tf.reshape(tf.stack(parts), [3, 3, c_in, c_out])

    @tf.function
    def patches_product(x, dy):
        patches = tf.image.extract_patches(x, [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME")
        product = tf.matmul(
            tf.reshape(patches, [-1, 9 * c_in]), tf.reshape(dy, [-1, c_out]), transpose_a=True
        )
        return tf.reshape(product, [3, 3, c_in, c_out])

    @tf.function
    def batch_as_channels(x, dy):
        padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        product = tf.nn.conv2d(
            tf.transpose(padded, [3, 1, 2, 0]), tf.transpose(dy, [1, 2, 0, 3]), 1, "VALID"
        )
        return tf.transpose(product, [1, 2, 0, 3])

    @tf.function
    def kernel_nchw(x, dy):
        to_nchw = [0, 3, 1, 2]
        return backprop_filter(tf.transpose(x, to_nchw), tf.transpose(dy, to_nchw), "NCHW")

    @tf.function
    def kernel_3d(x, dy):
        return tf.raw_ops.Conv3DBackpropFilterV2(
            input=x[:, None],
            filter_sizes=[1, 3, 3, c_in, c_out],
            out_backprop=dy[:, None],
            strides=[1, 1, 1, 1, 1],
            padding="SAME",
        )[0]

    @tf.function
    def kernel_on_halves(x, dy):
        sizes = [n // 2, n - n // 2]
        halves = zip(tf.split(x, sizes), tf.split(dy, sizes))
        return tf.add_n([backprop_filter(x_half, dy_half) for x_half, dy_half in halves])

    flops = 2 * n * h * h * c_in * c_out * 9
    reference = tf.cast(kernel(x, dy), tf.float32)
    scale = float(tf.reduce_max(tf.abs(reference)))
    print(f"N={n} H=W={h} C_in={c_in} C_out={c_out} {args.dtype}, {flops / 1e9:.2f} GFLOP")
    for function, arguments in (
        (forward, (x, w)),
        (kernel, (x, dy)),
        (shifted_products, (x, dy)),
        (column_products, (x, dy)),
        (patches_product, (x, dy)),
        (batch_as_channels, (x, dy)),
        (kernel_nchw, (x, dy)),
        (kernel_3d, (x, dy)),
        (kernel_on_halves, (x, dy)),
    ):
        result = function(*arguments)  # the trace, and a warm-up
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            function(*arguments).numpy()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        if function is forward:
            difference = "(forward)"
        else:
            error = float(tf.reduce_max(tf.abs(tf.cast(result, tf.float32) - reference))) / scale
            difference = f"difference {error:.2g}"
        print(
            f"{function.__name__:18s} {median * 1e3:8.1f} ms {flops / median / 1e9:7.1f} GFLOP/s"
            f"  {difference}"
        )


if __name__ == "__main__":
    main()
