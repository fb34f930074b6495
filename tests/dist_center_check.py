"""Run under torchrun: each process updates the loss centres from its half of a fixed batch; rank 0 saves them."""

import sys

import torch
import torch.distributed as dist

from visionfm_core.ssl import DINOClsLoss, IBOTPatchLoss

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
cls_logits, patch_logits = torch.randn(8, 32), torch.randn(12, 32)
cls_loss, patch_loss = DINOClsLoss(32), IBOTPatchLoss(32)
cls_loss.update_center(cls_logits.chunk(world)[rank])
patch_loss.update_center(patch_logits.chunk(world)[rank])
cls_loss.apply_center_update()
patch_loss.apply_center_update()
if rank == 0:
    torch.save({"cls": cls_loss.center, "patch": patch_loss.center}, sys.argv[1])
dist.destroy_process_group()
