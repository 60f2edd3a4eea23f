"""PyTorch eager twins of the suite's train steps (`benchmarks/speed/suite.py`): same layers,
shapes, optimizer and loss as ours, built from torch / torchvision (optional benchmark dependencies:
``pip install -e ".[bench]"``). Each ``*_step`` returns ``(step, num_params)``; ``step()`` runs
one optimizer update on fixed tensors and waits for the device.

Layouts are torch's (NCHW images); initialisations are torch's defaults (speed does not depend on
them). Differences that remain are named where they occur.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PAD_ID = 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _make_step(model: nn.Module, optimizer, loss_fn, clip: float, device, bf16: bool):
    def step():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, bf16):
            loss = loss_fn()
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        _sync(device)
        return loss

    return step, sum(p.numel() for p in model.parameters())


def _sinusoid(length: int, width: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * rate), torch.cos(position * rate)
    return table


def _token_step(model: nn.Module, source, targets, optim, bos_id: int, device, bf16):
    """AdamW on the mean token cross-entropy of ``model(source, BOS + targets[:, :-1])``."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=(optim.b1, optim.b2),
                                  eps=optim.eps, weight_decay=optim.weight_decay)
    decoder_inputs = torch.cat([torch.full_like(targets[:, :1], bos_id), targets[:, :-1]], dim=1)

    def loss():
        logits = model(source, decoder_inputs)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                               ignore_index=PAD_ID)

    return _make_step(model, optimizer, loss, optim.grad_clip_norm, device, bf16)


# ---------------------------------------------------------------- Transformer encoder-decoder

class Seq2Seq(nn.Module):
    """`mlx_research.models.seq2seq.Seq2SeqTransformer`: tied N(0, 1) embeddings + sinusoidal
    positions, ``nn.Transformer`` (pre-LN with final norms), logits / sqrt(d)."""

    def __init__(self, vocab: int, d_model: int, nhead: int, enc: int, dec: int, ff: int,
                 dropout: float, max_len: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        nn.init.normal_(self.embed.weight)
        self.transformer = nn.Transformer(d_model, nhead, enc, dec, ff, dropout,
                                          batch_first=True, norm_first=True)
        self.register_buffer("pe", _sinusoid(max_len, d_model))
        self.scale = d_model**-0.5

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        x = self.embed(src) + self.pe[: src.shape[1]]
        y = self.embed(tgt) + self.pe[: tgt.shape[1]]
        length = tgt.shape[1]  # bool masks throughout (True = not attended), as the padding
        causal = torch.ones(length, length, dtype=torch.bool, device=tgt.device).triu(1)
        h = self.transformer(x, y, tgt_mask=causal, src_key_padding_mask=src == PAD_ID,
                             tgt_key_padding_mask=tgt == PAD_ID,
                             memory_key_padding_mask=src == PAD_ID, tgt_is_causal=True)
        return (h @ self.embed.weight.T) * self.scale


def transformer_step(batch: dict, model_config, optim, bos_id: int, vocab: int, device, bf16):
    m = model_config
    inputs = torch.as_tensor(np.asarray(batch["inputs"]), device=device).long()
    targets = torch.as_tensor(np.asarray(batch["targets"]), device=device).long()
    model = Seq2Seq(vocab, m.d_model, m.nhead, m.num_encoder_layers, m.num_decoder_layers,
                    m.dim_feedforward, m.dropout, max(inputs.shape[1], targets.shape[1])).to(device)
    return _token_step(model, inputs, targets, optim, bos_id, device, bf16)


# ---------------------------------------------------------------- ResNet classification

def resnet_step(arch: str, images: np.ndarray, labels: np.ndarray, num_classes: int, lr: float,
                momentum: float, device, bf16):
    """torchvision ``resnet18/50(num_classes)``, SGD with momentum, mean cross-entropy."""
    import torchvision

    model = getattr(torchvision.models, arch)(num_classes=num_classes).to(device).train()
    x = torch.as_tensor(images.transpose(0, 3, 1, 2).copy(), device=device)
    y = torch.as_tensor(labels, device=device).long()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    return _make_step(model, optimizer, lambda: F.cross_entropy(model(x).float(), y), 0.0,
                      device, bf16)


# ---------------------------------------------------------------- Faster R-CNN

class SmallCNN(nn.Module):
    """`mlx_research.nn.SmallCNN`: conv3x3/2 - BN - ReLU stages; the last map is the output."""

    def __init__(self, features, in_channels: int = 3):
        super().__init__()
        layers = []
        for width in features:
            layers += [nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            in_channels = width
        self.body = nn.Sequential(*layers)
        self.out_channels = in_channels

    def forward(self, x):
        return self.body(x)


def faster_rcnn_step(batch: dict, config, num_classes: int, device, bf16):
    """torchvision ``FasterRCNN`` with the SmallCNN backbone and the config's anchors, sampling
    and head sizes (every other setting is torchvision's default, as ours). The images enter at
    their size (min_size = max_size = image size) with identity normalisation (ours are already
    normalised)."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    m, o = config.model, config.optim
    if m.backbone != "small_cnn" or m.fpn:
        raise ValueError("faster_rcnn twin: only the small_cnn backbone without FPN")
    size = config.data.image_size
    backbone = SmallCNN(m.small_cnn_features)
    model = FasterRCNN(
        backbone, min_size=size,
        max_size=size, image_mean=[0.0] * 3, image_std=[1.0] * 3,
        rpn_anchor_generator=AnchorGenerator(tuple(map(tuple, m.anchor_sizes)),
                                             tuple(map(tuple, m.aspect_ratios))),
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        rpn_pre_nms_top_n_train=m.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=m.rpn_post_nms_top_n_train,
        box_batch_size_per_image=m.box_batch_size_per_image,
        box_head=TwoMLPHead(backbone.out_channels * 7 * 7, m.representation_size),
        box_predictor=FastRCNNPredictor(m.representation_size, num_classes + 1),
    ).to(device).train()
    images = [torch.as_tensor(np.asarray(im).transpose(2, 0, 1).copy(), device=device)
              for im in batch["image"]]
    targets = []
    for boxes, labels, valid in zip(batch["boxes"], batch["labels"], batch["box_valid"]):
        valid = np.asarray(valid, bool)
        targets.append({"boxes": torch.as_tensor(np.asarray(boxes)[valid], device=device),
                        "labels": torch.as_tensor(np.asarray(labels)[valid], device=device).long()})
    optimizer = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum,
                                weight_decay=o.weight_decay)
    return _make_step(model, optimizer, lambda: sum(model(images, targets).values()),
                      o.grad_clip_norm, device, bf16)


# ---------------------------------------------------------------- R2Gen

class R2GenLayerNorm(nn.Module):
    """``gamma * (x - mean) / (std_unbiased + eps) + beta``."""

    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__()
        self.gamma, self.beta = nn.Parameter(torch.ones(width)), nn.Parameter(torch.zeros(width))
        self.eps = eps

    def forward(self, x, gamma=None, beta=None):
        gamma = self.gamma if gamma is None else self.gamma + gamma
        beta = self.beta if beta is None else self.beta + beta
        return gamma * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + self.eps) + beta


class ConditionalLayerNorm(R2GenLayerNorm):
    """MCLN: the LN's gamma and beta shifted by MLPs of the flattened relational memory."""

    def __init__(self, width: int, memory_width: int):
        super().__init__(width)
        mlp = lambda: nn.Sequential(nn.Linear(memory_width, width), nn.ReLU(),
                                    nn.Linear(width, width))
        self.mlp_gamma, self.mlp_beta = mlp(), mlp()

    def forward(self, x, memory):
        return super().forward(x, self.mlp_gamma(memory), self.mlp_beta(memory))


class RelationalMemory(nn.Module):
    """R2Gen's relational memory, stepped over the tokens in a Python loop (as the reference)."""

    def __init__(self, slots: int, width: int, heads: int, dropout: float):
        super().__init__()
        self.slots = slots
        self.attn = nn.MultiheadAttention(width, heads, dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.W, self.U = nn.Linear(width, 2 * width), nn.Linear(width, 2 * width)

    def forward(self, x):
        batch, length, width = x.shape
        memory = torch.eye(self.slots, width, device=x.device).expand(batch, -1, -1)
        outputs = []
        for t in range(length):
            token = x[:, t : t + 1]
            keys = torch.cat([memory, token], dim=1)
            update = memory + self.attn(memory, keys, keys, need_weights=False)[0]
            update = update + F.relu(self.mlp(update))
            gates = self.W(token) + self.U(torch.tanh(memory))
            input_gate, forget_gate = gates.chunk(2, dim=-1)
            memory = torch.sigmoid(input_gate) * torch.tanh(update) + torch.sigmoid(
                forget_gate) * memory
            outputs.append(memory.reshape(batch, -1))
        return torch.stack(outputs, dim=1)


class _Layer(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int, dropout: float, num_norms: int, norm):
        super().__init__()
        self.norms = nn.ModuleList([norm() for _ in range(num_norms)])
        self.attn = nn.ModuleList([nn.MultiheadAttention(d, heads, dropout, batch_first=True)
                                   for _ in range(num_norms - 1)])
        self.mlp = nn.Sequential(nn.Linear(d, d_ff), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(d_ff, d))
        self.drop = nn.Dropout(dropout)


class EncoderLayer(_Layer):
    def __init__(self, d, heads, d_ff, dropout):
        super().__init__(d, heads, d_ff, dropout, 2, lambda: R2GenLayerNorm(d))

    def forward(self, x):
        h = self.norms[0](x)
        x = x + self.drop(self.attn[0](h, h, h, need_weights=False)[0])
        return x + self.drop(self.mlp(self.norms[1](x)))


class DecoderLayer(_Layer):
    def __init__(self, d, heads, d_ff, dropout, memory_width):
        super().__init__(d, heads, d_ff, dropout, 3, lambda: ConditionalLayerNorm(d, memory_width))

    def forward(self, x, encoded, memory, mask):
        h = self.norms[0](x, memory)
        x = x + self.drop(self.attn[0](h, h, h, attn_mask=mask, need_weights=False)[0])
        h = self.norms[1](x, memory)
        x = x + self.drop(self.attn[1](h, encoded, encoded, need_weights=False)[0])
        return x + self.drop(self.mlp(self.norms[2](x, memory)))


class R2Gen(nn.Module):
    """`mlx_research.models.report.R2Gen` with the SmallCNN extractor and relational memory."""

    def __init__(self, m, vocab: int, max_len: int, channels: int):
        super().__init__()
        d = m.d_model
        self.extractor = SmallCNN(m.small_cnn_features, channels)
        self.att_embed = nn.Linear(self.extractor.out_channels, d)
        self.feature_dropout, self.dropout = nn.Dropout(m.feature_dropout), nn.Dropout(m.dropout)
        self.encoder = nn.ModuleList([EncoderLayer(d, m.num_heads, m.d_ff, m.dropout)
                                      for _ in range(m.num_layers)])
        self.encoder_norm = R2GenLayerNorm(d)
        self.embed = nn.Embedding(vocab, d)
        self.register_buffer("pe", _sinusoid(max_len, d))
        self.memory = RelationalMemory(m.rm_num_slots, d, m.rm_num_heads, m.dropout)
        self.decoder = nn.ModuleList([DecoderLayer(d, m.num_heads, m.d_ff, m.dropout,
                                                   m.rm_num_slots * d)
                                      for _ in range(m.num_layers)])
        self.decoder_norm = R2GenLayerNorm(d)
        self.logit = nn.Linear(d, vocab)
        self.scale = math.sqrt(d)

    def forward(self, images, decoder_inputs):
        patches = [self.extractor(images[:, v]).flatten(2).transpose(1, 2)
                   for v in range(images.shape[1])]
        x = self.feature_dropout(F.relu(self.att_embed(torch.cat(patches, dim=1))))
        for layer in self.encoder:
            x = layer(x)
        encoded = self.encoder_norm(x)
        length = decoder_inputs.shape[1]
        embedded = self.embed(decoder_inputs) * self.scale + self.pe[:length]
        memory = self.memory(self.dropout(embedded))
        keys = (decoder_inputs != PAD_ID).clone()
        keys[:, 0] = True
        causal = torch.ones(length, length, dtype=torch.bool, device=images.device).tril()
        mask = ~(causal[None] & keys[:, None, :])  # True = not attended (torch convention)
        mask = mask.repeat_interleave(self.decoder[0].attn[0].num_heads, dim=0)
        y = self.dropout(embedded)
        for layer in self.decoder:
            y = layer(y, encoded, memory, mask)
        return self.logit(self.decoder_norm(y))


def r2gen_step(batch: dict, config, vocab: int, max_len: int, bos_id: int, device, bf16):
    m, o = config.model, config.optim
    if m.backbone != "small_cnn" or not m.use_memory:
        raise ValueError("r2gen twin: only the small_cnn backbone with the relational memory")
    images = torch.as_tensor(np.asarray(batch["image"]).transpose(0, 1, 4, 2, 3).copy(),
                             device=device)
    tokens = torch.as_tensor(np.asarray(batch["tokens"]), device=device).long()
    model = R2Gen(m, vocab, max_len, images.shape[2]).to(device)
    return _token_step(model, images, tokens, o, bos_id, device, bf16)
