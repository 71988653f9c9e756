"""The BMB method: memory bank, adaptive class weights, losses and one step function per algorithm."""
