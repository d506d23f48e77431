"""Network pieces of OCLR by kind: initialisers, U-Net blocks, transformer layers."""
