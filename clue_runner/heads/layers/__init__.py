"""Building blocks of heads: GlobalPointer, losses, whitening."""
