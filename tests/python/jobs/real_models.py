"""Jobs built from real architectures (HF GPT-2, Llama, Mixtral, GPT-NeoX, BERT, T5 from
config, no weights; plain-torch models: a U-Net whose skips the parent holds, a
ViT and a ResNet with BatchNorm), shrunk so a step at batch 4 runs well under a
second on a CPU while activations still grow with the batch. For tests of
profiling, planning and checkpointing on models people actually train."""
import torch
import torch.nn as nn
import torch.nn.functional as F
import memfit

VOCAB = 512
SEQ = 32


def _ids(b, length=SEQ, seed=0):
    g = torch.Generator().manual_seed(seed + b)
    return torch.randint(0, VOCAB, (b, length), generator=g)


def _adamw(params):
    return torch.optim.AdamW(params, lr=1e-3)


def _gpt2_model():
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64,
                     bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, use_cache=False, attn_implementation="sdpa")
    return GPT2LMHeadModel(cfg)


def gpt2():
    """GPT-2, loss computed inside forward (labels=)."""
    torch.manual_seed(0)
    return memfit.Job(model=_gpt2_model(), make_batch=lambda b: _ids(b),
                      loss_fn=lambda m, ids: m(input_ids=ids, labels=ids).loss,
                      optimizer=_adamw)


def mixtral():
    """A mixture of experts (4 experts, top-2) with its config's use_cache left at
    the default (True): the model hands every decoder layer a key/value cache."""
    from transformers import MixtralConfig, MixtralForCausalLM
    torch.manual_seed(0)
    cfg = MixtralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=VOCAB,
                        max_position_embeddings=64, attn_implementation="sdpa")
    return memfit.Job(model=MixtralForCausalLM(cfg), make_batch=lambda b: _ids(b),
                      loss_fn=lambda m, ids: m(input_ids=ids, labels=ids).loss,
                      optimizer=_adamw)


def _next_token_loss(m, ids):
    logits = m(input_ids=ids).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))


def gpt2_loss_outside():
    """GPT-2, loss computed outside the model from the logits."""
    torch.manual_seed(0)
    return memfit.Job(model=_gpt2_model(), make_batch=lambda b: _ids(b),
                      loss_fn=_next_token_loss, optimizer=_adamw)


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                      max_position_embeddings=64, use_cache=False, attn_implementation="sdpa")
    return memfit.Job(model=LlamaForCausalLM(cfg), make_batch=lambda b: _ids(b),
                      loss_fn=lambda m, ids: m(input_ids=ids, labels=ids).loss,
                      optimizer=_adamw)


def neox():
    """GPT-NeoX: its emb_dropout (Dropout(p=0)) returns the embedding's output
    tensor itself, and its rotary embedding makes tensors no gradient reaches."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                        vocab_size=VOCAB, max_position_embeddings=64, use_cache=False, attn_implementation="sdpa")
    return memfit.Job(model=GPTNeoXForCausalLM(cfg), make_batch=lambda b: _ids(b),
                      loss_fn=lambda m, ids: m(input_ids=ids, labels=ids).loss,
                      optimizer=_adamw)


def bert():
    from transformers import BertConfig, BertForMaskedLM
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=64,
                     attn_implementation="sdpa")
    return memfit.Job(model=BertForMaskedLM(cfg), make_batch=lambda b: _ids(b),
                      loss_fn=lambda m, ids: m(input_ids=ids, labels=ids).loss,
                      optimizer=_adamw)


def t5():
    from transformers import T5Config, T5ForConditionalGeneration
    torch.manual_seed(0)
    cfg = T5Config(d_model=64, d_ff=128, num_layers=3, num_decoder_layers=3, num_heads=4,
                   d_kv=16, vocab_size=VOCAB, use_cache=False, decoder_start_token_id=0,
                   pad_token_id=0)
    return memfit.Job(model=T5ForConditionalGeneration(cfg),
                      make_batch=lambda b: (_ids(b, SEQ), _ids(b, SEQ // 2, seed=1000)),
                      loss_fn=lambda m, batch: m(input_ids=batch[0], labels=batch[1]).loss,
                      optimizer=_adamw)


def _conv_block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DownStage(nn.Module):
    """conv-norm-relu x2; the output is both the skip and (pooled) the next input."""
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = _conv_block(cin, cout)

    def forward(self, x):
        return self.conv(x)


class UpStage(nn.Module):
    """Upsample by a transposed conv, concatenate the skip, conv-norm-relu x2."""
    def __init__(self, cin, cskip, cout):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cskip, 2, stride=2)
        self.conv = _conv_block(2 * cskip, cout)

    def forward(self, x, skip):
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    def __init__(self, cin=3, classes=4, widths=(8, 16, 32)):
        super().__init__()
        chans = [cin, *widths]
        self.down = nn.ModuleList([DownStage(chans[i], chans[i + 1]) for i in range(len(widths))])
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _conv_block(widths[-1], 2 * widths[-1])
        ups, c = [], 2 * widths[-1]
        for w in reversed(widths):
            ups.append(UpStage(c, w, w))
            c = w
        self.up = nn.ModuleList(ups)
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x):
        skips = []  # held here by the parent, read by the decoder: not a chain
        for stage in self.down:
            x = stage(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for stage, skip in zip(self.up, reversed(skips)):
            x = stage(x, skip)
        return self.head(x)


def _image_job(make_model, classes, per_pixel=False, optimizer=_adamw):
    """A job on 3x32x32 images with a cross-entropy loss: one class per image, or
    one per pixel (segmentation)."""
    torch.manual_seed(0)

    def batch(b):
        g = torch.Generator().manual_seed(b)
        target = (b, 32, 32) if per_pixel else (b,)
        return torch.randn(b, 3, 32, 32, generator=g), torch.randint(0, classes, target, generator=g)
    return memfit.Job(model=make_model(), make_batch=batch,
                      loss_fn=lambda m, batch: F.cross_entropy(m(batch[0]), batch[1]),
                      optimizer=optimizer)


def unet():
    return _image_job(UNet, classes=4, per_pixel=True)


class ViTBlock(nn.Module):
    """Pre-norm: nn.MultiheadAttention, then a GELU MLP, each with a residual."""
    def __init__(self, d, heads):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        h = self.n1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.n2(x))


class ViT(nn.Module):
    """A vision transformer as a user writes one in plain torch: a patch conv, a
    class token and learned positions (parameters of the root, in no unit), the
    blocks in a ModuleList, a head on the class token. Tried as a new user would
    (2026-12-03): planner/PLAN.md, "The ladder check"."""
    def __init__(self, img=32, patch=4, d=96, depth=6, heads=4, classes=10):
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.zeros(1, (img // patch) ** 2 + 1, d))
        self.blocks = nn.ModuleList(ViTBlock(d, heads) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def vit():
    return _image_job(ViT, classes=10)


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with BatchNorm, and a 1x1
    projection shortcut where the shape changes."""
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(y)) + self.short(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet as a user writes one: a stem, three stages of two
    blocks in nn.Sequential (the first of each later stage downsampling), a head."""
    def __init__(self, w=16, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(w, w, 1), BasicBlock(w, w, 1))
        self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w, 1))
        self.layer3 = nn.Sequential(BasicBlock(2 * w, 4 * w, 2), BasicBlock(4 * w, 4 * w, 1))
        self.fc = nn.Linear(4 * w, classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet():
    return _image_job(ResNet, classes=10, optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9))
