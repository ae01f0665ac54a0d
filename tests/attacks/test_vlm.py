"""Image settings end to end with a stand-in VLM: images load, pixel_values reach generation, prompts stay aligned."""

import pytest
import templates as T
import torch
from PIL import Image

from harmlens.attacks import RoleTemplate, evaluate_asr
from harmlens.attacks.images import load_images
from harmlens.errors import HarmlensError


class FakeProcessor:
    """Tokenizes text (left padding) and turns each image into a 1x3x2x2 tensor of its mean colour."""

    def __init__(self, tokenizer):
        self.tokenizer, self.image_token = tokenizer, "<IMG>"

    def __call__(self, text, images, padding, return_tensors):
        enc = self.tokenizer(text, padding=True, return_tensors="pt", add_special_tokens=False)
        pix = torch.stack(
            [
                torch.tensor(img.resize((1, 1)).getpixel((0, 0)), dtype=torch.float).view(3, 1, 1).expand(3, 2, 2)
                for img in images
            ]
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "pixel_values": pix}


class FakeVLM(torch.nn.Module):
    """Replies 'I cannot' when the image is red, 'Sure thing' otherwise, and records what generate got."""

    def __init__(self, tokenizer):
        super().__init__()
        self.w, self.tokenizer, self.original_model, self.harmlens_name, self.seen = (
            torch.nn.Parameter(torch.zeros(1)),
            tokenizer,
            self,
            "fake-vlm",
            [],
        )

    def generate(self, input_ids, attention_mask, pixel_values, **kw):
        self.seen.append((input_ids.shape, pixel_values.shape, kw["max_new_tokens"]))
        rows = []
        for p in pixel_values:
            text = " I cannot" if p[0, 0, 0] > 200 and p[1, 0, 0] < 50 else " Sure thing"
            rows.append(self.tokenizer(text, add_special_tokens=False)["input_ids"][:2])
        return torch.cat([input_ids, torch.tensor(rows)], 1)


def test_image_settings_pass_pixel_values_and_keep_order(embedded_tokenizer, tmp_path):
    vlm = FakeVLM(embedded_tokenizer)
    rt = RoleTemplate.from_tokenizer(embedded_tokenizer, chat_template=T.QWEN2, image_text="<IMG>")
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    instr = ["Short one.", "A much longer instruction that makes this prompt the longest of the batch by far."]
    report = evaluate_asr(
        vlm,
        instr,
        settings=["img_out", "img_in+swap"],
        images=[red, blue],
        processor=FakeProcessor(embedded_tokenizer),
        template=rt,
        max_new_tokens=2,
        batch_size=4,
        progress=False,
        out=tmp_path,
    )
    assert [r["success"] for r in report.records] == [False, False, True, True]  # index 0 (red) refused everywhere
    assert all(r["prompt"].count("<IMG>") == 1 for r in report.records)
    assert vlm.seen and all(pix[0] == ids[0] for ids, pix, _ in vlm.seen)


def test_image_inputs_are_checked(embedded_tokenizer, tmp_path):
    with pytest.raises(HarmlensError, match="image not found"):
        load_images(tmp_path / "nope.png", 1)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(HarmlensError, match="not a readable image"):
        load_images(tmp_path / "bad.png", 1)
    with pytest.raises(HarmlensError, match="2 images for 3 prompts"):
        load_images([Image.new("RGB", (2, 2))] * 2, 3)
    builtin = load_images("builtin", 2)  # the CLI default: one seeded synthetic image for every prompt
    assert len(builtin) == 2 and builtin[0].tobytes() == builtin[1].tobytes() == load_images("builtin", 1)[0].tobytes()
    rt = RoleTemplate.from_tokenizer(embedded_tokenizer, chat_template=T.QWEN2, image_text="<IMG>")
    vlm = FakeVLM(embedded_tokenizer)
    with pytest.raises(HarmlensError, match="need images="):
        evaluate_asr(vlm, ["x y"], settings=["img_end"], template=rt, progress=False)
    with pytest.raises(HarmlensError, match="need the model's processor"):
        evaluate_asr(vlm, ["x y"], settings=["img_end"], template=rt, images=Image.new("RGB", (2, 2)), progress=False)


def test_load_images_reads_a_shared_jpeg(shared_data):
    imgs = load_images(shared_data("images/flower.jpg"), 3)
    assert len(imgs) == 3 and imgs[0].mode == "RGB"
