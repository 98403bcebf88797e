"""Speech separation: ConvTasNet, DPRNN, SepFormer and SPMamba with permutation-invariant training."""
