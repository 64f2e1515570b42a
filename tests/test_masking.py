import numpy as np
import pytest
import torch

from hf_masked_vl.data.streaming import ImageTextCollator
from hf_masked_vl.models import AttGMAEConfig, MREViTConfig
from hf_masked_vl.models.masking import (
    KEEP_SET_POLICIES,
    DrawAll,
    DrawnInputs,
    KeepSetGenerator,
    RandomGuidanceMaps,
    block_mask,
    crop_score_map,
    keep_indices_from_noise,
    mask_from_keep_indices,
    mask_rng,
    mask_to_keep_indices,
    num_kept,
    num_kept_groups,
    random_group_keep_indices,
    random_keep_indices,
    reversed_block_mask,
    topk_group_keep_indices,
)


def test_random_keep_is_reproducible_sorted_and_unique():
    first = random_keep_indices([mask_rng(7, i, 0) for i in range(4)], 196, 49)
    again = random_keep_indices([mask_rng(7, i, 0) for i in range(4)], 196, 49)
    other_epoch = random_keep_indices([mask_rng(7, i, 1) for i in range(4)], 196, 49)
    assert first.shape == (4, 49) and first.dtype == torch.long
    assert torch.equal(first, again) and not torch.equal(first, other_epoch)
    assert all(len(set(row.tolist())) == 49 for row in first)
    assert torch.equal(first, first.sort(dim=1).values)
    with pytest.raises(ValueError, match="num_keep"):
        random_keep_indices([mask_rng(0)], 16, 17)


def test_block_mask_never_overshoots_and_uses_blocks():
    counts = [block_mask(mask_rng(0, i), (14, 14), 75).sum() for i in range(200)]
    assert max(counts) <= 75
    assert np.mean(counts) > 70  # BEiT's generator gets close to the target


def test_reversed_block_mask_keeps_the_ratio_on_both_branches():
    for ratio in (0.4, 0.5):
        masks = np.stack([reversed_block_mask(mask_rng(1, i), (16, 16), ratio) for i in range(400)])
        assert abs(masks.mean() - ratio) < 0.03
    # a naive flip of a ratio-r mask would average 0.5 whatever r is
    naive = [~m if i % 2 else m for i, m in enumerate(block_mask(mask_rng(2, i), (16, 16), 102) for i in range(400))]
    assert abs(np.mean(naive) - 0.5) < 0.03


def test_mask_to_keep_indices_gives_a_fixed_count_preferring_unmasked():
    masks = np.zeros((3, 16), dtype=bool)
    masks[0, :10] = True  # 6 unmasked: all kept plus 2 masked
    masks[1, :2] = True  # 14 unmasked: 8 of them kept
    keep = mask_to_keep_indices(masks, 8, [mask_rng(0, i) for i in range(3)])
    assert keep.shape == (3, 8)
    assert set(range(10, 16)) <= set(keep[0].tolist())
    assert not set(keep[1].tolist()) & {0, 1}
    assert len(set(keep[2].tolist())) == 8


def test_topk_groups_keep_the_highest_scoring_2x2_groups():
    scores = torch.zeros(1, 4, 4)
    scores[0, 2:, 2:] = 5.0  # group 3 (bottom-right) best
    scores[0, :2, :2] = 1.0  # group 0 second
    keep = topk_group_keep_indices(scores, mask_ratio=0.75, group_size=2)  # floor(4 * 0.25) + 1 = 2 groups
    assert keep.tolist() == [[0, 1, 4, 5, 10, 11, 14, 15]]


def test_topk_groups_match_the_official_count():
    keep = topk_group_keep_indices(torch.rand(2, 14, 14), 0.5, 2)
    assert keep.shape == (2, 100)  # floor(49 / 2) + 1 = 25 of 49 groups, as microsoft/A-CLIP's get_att_mask
    assert topk_group_keep_indices(torch.rand(2, 8, 8), 0.5, 2).shape == (2, 36)  # 9 of 16 groups, not 8
    assert num_kept_groups(16, 0.0) == 16 and num_kept_groups(49, 0.75) == 13
    with pytest.raises(ValueError, match="not divisible"):
        topk_group_keep_indices(torch.rand(1, 7, 7), 0.5, 2)


def test_crop_score_map_identity_and_shift():
    scores = torch.arange(16.0).view(1, 4, 4)
    box = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    torch.testing.assert_close(crop_score_map(scores, box, box, (4, 4)), scores)
    # the right half of the source crop, resampled to 2 columns, reads source columns 2 and 3
    right = torch.tensor([[0.0, 32.0, 64.0, 32.0]])
    torch.testing.assert_close(crop_score_map(scores, box, right, (4, 2)), scores[:, :, 2:])


def test_random_group_masks_keep_whole_groups_reproducibly():
    rngs = [mask_rng(7, i) for i in range(3)]
    keep = random_group_keep_indices(rngs, (8, 8), 2, 0.5)
    assert keep.shape == (3, 36)
    for row in keep.tolist():
        groups = {(index // 8 // 2, index % 8 // 2) for index in row}
        assert len(groups) == 9  # every kept patch belongs to one of 9 complete 2x2 groups
    again = random_group_keep_indices([mask_rng(7, i) for i in range(3)], (8, 8), 2, 0.5)
    assert torch.equal(keep, again)


def test_num_kept():
    assert num_kept(196, 0.75) == 49
    with pytest.raises(ValueError, match="mask_ratio"):
        num_kept(196, 1.0)


# ---- one home: the generators of `hf_masked_vl.models.masking` and the collator's one return type ----
def test_every_keep_set_policy_draws_sorted_int64_indices_of_the_rule_count():
    seeds = torch.tensor([0, 5, 11])
    for policy in KEEP_SET_POLICIES:
        drawn = KeepSetGenerator(policy, (8, 8), 0.6, min_block=4)(seeds)
        assert isinstance(drawn, DrawnInputs) and drawn.guidance is None
        keep = drawn.keep_indices
        assert keep.dtype == torch.int64 and keep.shape == (3, num_kept(64, 0.6)), policy
        assert torch.equal(keep, keep.sort(dim=1).values) and 0 <= keep.min() and keep.max() < 64
        assert all(len(set(row)) == keep.shape[1] for row in keep.tolist())
    groups = KeepSetGenerator("random_groups", 8, 0.5, group_size=2, num_views=2)(seeds).keep_indices
    assert groups.shape == (3, 2, 36) and groups.dtype == torch.int64
    with pytest.raises(ValueError, match="reversed_block"):
        KeepSetGenerator("checker", 8, 0.5)


def test_generators_draw_from_each_sample_seed_and_view():
    seeds = torch.tensor([4, 9])

    def rngs(view: int = 0) -> list[np.random.Generator]:
        return [mask_rng(seed, view) for seed in seeds.tolist()]

    reversed_rngs = rngs()
    masks = np.stack([reversed_block_mask(rng, (6, 6), 0.5, min_block=4) for rng in reversed_rngs])
    reference = mask_to_keep_indices(masks, num_kept(36, 0.5), reversed_rngs)
    keep = KeepSetGenerator("reversed_block", 6, 0.5, min_block=4)(seeds).keep_indices
    assert torch.equal(keep, reference)
    two_views = KeepSetGenerator("random", 6, 0.75, num_views=2)(seeds).keep_indices
    for view in range(2):
        assert torch.equal(two_views[:, view], random_keep_indices(rngs(view), 36, 9))


def test_draw_all_merges_generators_and_refuses_a_field_drawn_twice():
    seeds = torch.tensor([1, 2])
    keep_sets, maps = KeepSetGenerator("random", 4, 0.75), RandomGuidanceMaps(4)
    drawn = DrawAll(keep_sets, maps)(seeds)
    assert torch.equal(drawn.keep_indices, keep_sets(seeds).keep_indices)
    assert torch.equal(drawn.guidance, maps(seeds).guidance) and drawn.guidance.dtype == torch.float32
    assert set(drawn.batch_fields()) == {"keep_indices", "guidance"}
    with pytest.raises(ValueError, match="keep_indices"):
        DrawAll(keep_sets, keep_sets)(seeds)


def test_the_collator_puts_the_drawn_fields_into_the_batch():
    examples = [{"pixel_values": torch.zeros(3, 4, 4), "sample_seed": seed} for seed in (3, 8)]
    generator = DrawAll(KeepSetGenerator("random", 4, 0.75), RandomGuidanceMaps(4))
    batch = ImageTextCollator(mask_generator=generator, collect_skipped_records=False)(examples)
    expected = generator(torch.tensor([3, 8]))
    assert torch.equal(batch["keep_indices"], expected.keep_indices)
    assert torch.equal(batch["guidance"], expected.guidance)
    nothing = ImageTextCollator(mask_generator=lambda seeds: DrawnInputs(), collect_skipped_records=False)(examples)
    assert not {"keep_indices", "guidance"} & set(nothing)


def test_noise_keeps_the_smallest_and_the_mask_marks_the_rest():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    keep = keep_indices_from_noise(noise, 2)
    assert keep.tolist() == [[1, 3]]  # increasing noise, as ViTMAE
    assert mask_from_keep_indices(keep, 1, 4).tolist() == [[1.0, 0.0, 1.0, 0.0]]
    assert mask_from_keep_indices(None, 1, 4).tolist() == [[0.0, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9, 0.99])
def test_the_configs_keep_counts_follow_the_one_rule(ratio):
    vision = {"image_size": 48, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    attg, mre = (
        AttGMAEConfig(vision_config=vision, mask_ratio=ratio),
        MREViTConfig(vision_config=vision, mask_ratio=ratio),
    )
    assert attg.num_kept_patches == mre.num_kept_patches == num_kept(36, ratio)
