"""A Gradio app (the way models are shown in a Hugging Face Space) for DINOv2 features.

Pick a model folder or Hub id, upload an image, and see what the model sees: the PCA of its patch features
(the paper's Fig. 1 picture: foreground by the first component, then RGB from three components of the
foreground patches), the attention of the last block's CLS token to the patches (one map per head), and the
image's nearest neighbours by CLS cosine similarity in a small gallery (Fashion-MNIST's test split when the
Debian package is installed, else scikit-image's photos).

    pip install -e ".[app]"          # gradio, kept out of the core install (it pins Pillow < 13)
    python app.py --model outputs/demo/model            # offline, the demo's model folder
    python app.py --model facebook/dinov2-small --port 7860

The same analysis is the app's API (`/analyse`), e.g. with `gradio_client`.
"""

from __future__ import annotations

import argparse
import functools
import io

import numpy as np
import torch
from PIL import Image

from evaluation.pca import pca_picture

DEFAULT_MODEL = "outputs/demo/model"
GALLERY_SIZE = 500
NEIGHBOURS = 8


@functools.lru_cache(maxsize=2)
def load(model_name: str):
    """(model with eager attention, image processor, analysis size) of a folder or Hub id."""
    import modeling_dinov2  # noqa: F401  (registers the model type)
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(model_name, attn_implementation="eager").eval()
    processor = AutoImageProcessor.from_pretrained(model_name)
    patch = model.config.patch_size
    crop = processor.crop_size["height"] if getattr(processor, "crop_size", None) else model.config.image_size
    size = max(crop, 8 * patch) // patch * patch  # at least 8 x 8 patches, so the maps show something
    return model, processor, size


def pixel_values(processor, images: list[Image.Image], size: int) -> torch.Tensor:
    """The model folder's own preprocessing (its normalisation), at `size` x `size`."""
    return processor([image.convert("RGB") for image in images], return_tensors="pt", size={"shortest_edge": size},
                     crop_size={"height": size, "width": size})["pixel_values"]


@functools.lru_cache(maxsize=2)
def gallery(model_name: str) -> tuple[list[Image.Image], torch.Tensor]:
    """Gallery images and their normalised CLS features under `model_name`."""
    images = gallery_images()
    model, processor, size = load(model_name)
    features = []
    with torch.no_grad():
        for start in range(0, len(images), 64):
            output = model(pixel_values(processor, images[start : start + 64], size))
            features.append(torch.nn.functional.normalize(output.pooler_output.float(), dim=1))
    return images, torch.cat(features)


def gallery_images(count: int = GALLERY_SIZE) -> list[Image.Image]:
    try:
        from evaluation.data import load_fashion_mnist_arrays

        items, _ = load_fashion_mnist_arrays("test")
        return [Image.fromarray(item).convert("RGB") for item in items[:count]]
    except (FileNotFoundError, OSError):
        from evaluation.pca import package_photos

        return list(package_photos().values())


def figure_array(figure) -> np.ndarray:
    """A matplotlib figure as an (H, W, 3) uint8 array."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return np.asarray(Image.open(buffer).convert("RGB"))


def attention_maps(attentions: torch.Tensor, num_prefix_tokens: int, grid: tuple[int, int]) -> np.ndarray:
    """(heads, h, w) attention of the CLS token to the patches, from one block's (1, heads, T, T) weights."""
    cls_to_patches = attentions[0, :, 0, num_prefix_tokens:]  # (heads, h*w)
    return cls_to_patches.reshape(-1, *grid).float().numpy()


def analyse(model_name: str, image: Image.Image):
    """(PCA picture, attention maps, [(neighbour, caption)]) of one image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if image is None:
        raise ValueError("Upload an image first.")
    model, processor, size = load(model_name)
    inputs = pixel_values(processor, [image], size)
    with torch.no_grad():
        output = model(inputs, output_hidden_states=False, output_attentions=True)
    grid = (size // model.config.patch_size, size // model.config.patch_size)
    prefix = 1 + model.config.num_register_tokens
    patches = output.last_hidden_state[:, prefix:].reshape(1, *grid, -1)
    picture = pca_picture(patches.float())
    pca = np.asarray(Image.fromarray((picture.rgb[0] * 255).astype(np.uint8)).resize((224, 224), Image.NEAREST))

    maps = attention_maps(output.attentions[-1], prefix, grid)
    figure, axes = plt.subplots(1, len(maps), figsize=(2 * len(maps), 2.2), squeeze=False)
    for head, (axis, attention) in enumerate(zip(axes[0], maps)):
        axis.imshow(attention, cmap="inferno")
        axis.set_title(f"head {head}", fontsize=9)
        axis.set_axis_off()
    attention_image = figure_array(figure)

    images, features = gallery(model_name)
    query = torch.nn.functional.normalize(output.pooler_output.float(), dim=1)
    similarities, indices = (features @ query[0]).topk(min(NEIGHBOURS, len(images)))
    neighbours = [(images[i], f"cosine {s:.3f}") for s, i in zip(similarities.tolist(), indices.tolist())]
    return pca, attention_image, neighbours


def build_demo(default_model: str):
    import gradio as gr

    with gr.Blocks(title="DINOv2 features") as demo:
        gr.Markdown("# DINOv2 features\nUpload an image: the PCA of its patch features, the last block's CLS "
                    "attention per head, and its nearest neighbours in a small gallery.")
        with gr.Row():
            model_name = gr.Textbox(value=default_model, label="model (folder or Hub id)")
            image = gr.Image(type="pil", label="image", elem_id="input-image")
        button = gr.Button("Analyse", elem_id="analyse")
        with gr.Row():
            pca = gr.Image(label="PCA of patch features", elem_id="pca")
            attention = gr.Image(label="CLS attention, last block", elem_id="attention")
        neighbours = gr.Gallery(label="nearest neighbours", columns=NEIGHBOURS, elem_id="neighbours")
        button.click(analyse, inputs=[model_name, image], outputs=[pca, attention, neighbours], api_name="analyse")
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model folder or Hub id shown first")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    build_demo(args.model).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
