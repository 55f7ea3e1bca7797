"""Output heads: energy (scalar), direct forces (vector) and stress (symmetric rank-2).

Forces are predicted directly by an equivariant attention block (its l = 1 output), not as
energy gradients; the stress head likewise predicts stress directly.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

from eqv2calc.model.backbone import BackboneOutput, EquiformerV2Backbone
from eqv2calc.model.chunking import edge_chunks
from eqv2calc.model.layer_norm import make_norm
from eqv2calc.model.scatter import segment_mean, segment_sum


class EnergyHead(nn.Module):
    """Per-atom feed-forward network on the l = 0 output, pooled per structure.

    ``reduce="sum"`` divides the sum by the backbone's ``avg_num_nodes`` (the released
    models); ``"mean"`` averages over the structure's atoms. Output ``[B]`` (normalised units).
    """

    def __init__(self, backbone: EquiformerV2Backbone, *, reduce: str = "sum") -> None:
        super().__init__()
        if reduce not in ("sum", "mean"):
            raise ValueError(f"energy head reduce must be 'sum' or 'mean', got {reduce!r}")
        self.reduce = reduce
        self.avg_num_nodes = float(backbone.config.avg_num_nodes)
        self.ffn = backbone.make_ffn(1)

    def forward(self, emb: BackboneOutput) -> torch.Tensor:
        node_energy = self.ffn(emb.node_features)[:, 0, 0]
        g = emb.graph
        if self.reduce == "sum":
            return segment_sum(node_energy, g.batch, g.num_graphs) / self.avg_num_nodes
        return segment_mean(node_energy, g.batch, g.num_graphs)


class ForceHead(nn.Module):
    """An attention block with one output channel; its l = 1 coefficients are the force ``[N, 3]``."""

    def __init__(self, backbone: EquiformerV2Backbone, *, denoising_block: bool = False) -> None:
        super().__init__()
        self.attention = backbone.make_attention(1)
        if denoising_block:
            # DeNS checkpoints carry a second block that predicts denoising displacements during
            # training; inference never uses it, but it is kept so such files load and save whole.
            self.denoising_attention = backbone.make_attention(1)

    def forward(self, emb: BackboneOutput) -> torch.Tensor:
        g = emb.graph
        out = self.attention(
            emb.node_features,
            g.atomic_numbers,
            emb.distance_basis,
            g.edge_index,
            emb.rotation,
            emb.edge_weight,
        )
        return out[:, 1:4, 0]


def symmetric_tensor_basis(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Cartesian bases of the l = 0 and l = 2 parts of a symmetric 3×3 tensor.

    Returns ``iso [3, 3]`` (= I/√3) and ``aniso [5, 3, 3]``: unit-norm symmetric traceless
    matrices ``S_m`` with ``Σ_ij S_m[i, j] r_i r_j ∝ Y_2m(r)`` (e3nn's real basis, positive
    factor), so that ``T = t0·iso + Σ_m t2_m·S_m``.
    """
    # Degree-2 harmonics of an unnormalised vector are exact quadratic forms: fit them on the six
    # independent monomials (a full-rank, exactly solvable system) and read off the matrices.
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(32, 3, generator=gen, dtype=torch.float64)
    y2 = o3.spherical_harmonics(2, r, normalize=False, normalization="component")  # [32, 5]
    x, y, z = r.unbind(1)
    monomials = torch.stack((x * x, y * y, z * z, x * y, x * z, y * z), dim=1)  # [32, 6]
    c = torch.linalg.lstsq(monomials, y2, driver="gelsd").solution  # [6, 5]
    coeff = torch.zeros(5, 3, 3, dtype=torch.float64)
    for i in range(3):
        coeff[:, i, i] = c[i]
    for k, (i, j) in enumerate(((0, 1), (0, 2), (1, 2)), start=3):
        coeff[:, i, j] = coeff[:, j, i] = c[k] / 2
    coeff = coeff / coeff.reshape(5, 9).norm(dim=1).view(5, 1, 1)
    iso = torch.eye(3, dtype=torch.float64) / math.sqrt(3.0)
    return iso.to(dtype), coeff.to(dtype)


class Rank2Head(nn.Module):
    """Symmetric rank-2 tensor (stress) from edge features.

    Per edge, node features of the target (and source, with ``use_source_target_embedding``)
    are contracted with the spherical harmonics of the edge vector (normalised across degrees
    by an equivariant norm), layer-normalised, and either

    * ``decompose=True``: pooled to nodes as an invariant part and an l = 2 part (edge SH of
      degree 2 times the features), each mapped by a 2-layer MLP, pooled per structure →
      ``(iso [B], aniso [B, 5])``; or
    * ``decompose=False``: multiplied by the outer product of the edge vector, pooled, MLP →
      ``[B, 3, 3]``.

    Pooling per structure is a mean (``extensive=False``) or a sum (``extensive=True``; the
    decomposed parts are then divided by the head's own ``avg_num_nodes``, 1 by default, as in
    the reference). Each MLP has ``num_mlp_layers`` linear layers (SiLU between them), the last
    one with a single output; ``edge_level_mlp`` applies it to every edge before pooling to
    atoms instead of to the atoms after pooling.
    """

    def __init__(
        self,
        backbone: EquiformerV2Backbone,
        *,
        decompose: bool = False,
        use_source_target_embedding: bool = False,
        extensive: bool = False,
        edge_level_mlp: bool = False,
        num_mlp_layers: int = 2,
        avg_num_nodes: float = 1.0,
    ) -> None:
        super().__init__()
        c = backbone.config
        if num_mlp_layers < 1:
            raise ValueError(f"num_mlp_layers must be >= 1, got {num_mlp_layers}")
        self.lmax = c.lmax
        self.decompose = decompose
        self.use_source_target_embedding = use_source_target_embedding
        self.extensive = extensive
        self.edge_level_mlp = edge_level_mlp
        self.avg_num_nodes = float(avg_num_nodes)
        width = 2 * c.sphere_channels if use_source_target_embedding else c.sphere_channels
        self.sh_norm = make_norm(c.norm_type, c.lmax, 1)
        self.edge_norm = nn.LayerNorm(width)

        def mlp() -> nn.Sequential:
            layers: list[nn.Module] = []
            for _ in range(num_mlp_layers - 1):
                layers += [nn.Linear(width, width), nn.SiLU()]
            return nn.Sequential(*layers, nn.Linear(width, 1))

        if decompose:
            self.scalar_mlp, self.irrep2_mlp = mlp(), mlp()
        else:
            self.tensor_mlp = mlp()

    def _pool(self, values: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
        return (
            segment_sum(values, segment, n) if self.extensive else segment_mean(values, segment, n)
        )

    def forward(self, emb: BackboneOutput) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        g = emb.graph
        x = emb.node_features
        vec = g.edge_vec
        num_nodes = x.shape[0]
        sh = o3.spherical_harmonics(list(range(self.lmax + 1)), vec, normalize=False)  # [E, K]
        sh = self.sh_norm(sh.unsqueeze(-1)).squeeze(-1)
        # contract the node features of each edge with the edge's harmonics, a chunk at a time
        # (the gathered features [E, K, width] would be the largest tensor of the whole model)
        edge_feat = x.new_empty(vec.shape[0], self.edge_norm.normalized_shape[0])
        for start, stop in edge_chunks(vec.shape[0], x.device):
            part = g.edge_index[:, start:stop]
            feats = x.index_select(0, part[1])  # [n, K, C]
            if self.use_source_target_embedding:
                feats = torch.cat((x.index_select(0, part[0]), feats), dim=2)  # [n, K, 2C]
            edge_feat[start:stop] = torch.einsum("ekc,ek->ec", feats, sh[start:stop])
        edge_feat = self.edge_norm(edge_feat)  # [E, width]
        dst = g.edge_index[1]

        if self.decompose:
            sh2 = o3.spherical_harmonics(2, vec, normalize=True)  # [E, 5] (integral normalisation)
            edge_irrep2 = sh2.unsqueeze(2) * edge_feat.unsqueeze(1)  # [E, 5, width]
            if self.edge_level_mlp:
                node_scalar = segment_mean(self.scalar_mlp(edge_feat), dst, num_nodes)
                node_irrep2 = segment_mean(self.irrep2_mlp(edge_irrep2), dst, num_nodes)
            else:
                node_scalar = self.scalar_mlp(segment_mean(edge_feat, dst, num_nodes))
                node_irrep2 = self.irrep2_mlp(segment_mean(edge_irrep2, dst, num_nodes))
            iso = self._pool(node_scalar.view(-1), g.batch, g.num_graphs)
            aniso = self._pool(node_irrep2.view(-1, 5), g.batch, g.num_graphs)
            if self.extensive:
                iso, aniso = iso / self.avg_num_nodes, aniso / self.avg_num_nodes
            return iso, aniso

        outer = (vec.unsqueeze(2) * vec.unsqueeze(1)).reshape(-1, 9)  # [E, 9]
        edge_outer = edge_feat.unsqueeze(2) * outer.unsqueeze(1)  # [E, width, 9]
        if self.edge_level_mlp:
            node = segment_mean(
                self.tensor_mlp(edge_outer.transpose(1, 2)).view(-1, 9), dst, num_nodes
            )
        else:
            node = self.tensor_mlp(segment_mean(edge_outer, dst, num_nodes).transpose(1, 2)).view(
                -1, 9
            )
        return self._pool(node, g.batch, g.num_graphs).view(-1, 3, 3)
