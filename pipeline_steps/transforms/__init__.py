"""What a method does to a supernet state: pruning and soft decay (HPE-DARTS), shrinking and
expanding (SE-NAS), partitioning and distillation (HEP-NAS), single-path sampling (SPOS). May
import every layer below `methods`: `common`, `spaces`, `data`, `supernet`, `evaluation`, `scores`.
"""
