"""Field indices of the int64 `meta` table shared by `packing.py` and the kernels.

meta[0] is the model header; meta[1 + k] describes cell k, a (layer, direction) pair
in PyTorch's h_n order: layer-major, forward before reverse.

Packed gate rows: the hidden units of a cell are cut into blocks of BLOCK units; the
4*w rows of a block of w units sit together, gate-major (i, o, f, c) inside the block,
so one pass over a block yields all four gates of its units for the pointwise update.
Row of gate q (0=i, 1=o, 2=f, 3=c) of unit u0 + j in the block starting at u0:
    4 * u0 + q * w + j
Steps alternate the order in which they walk blocks and row sets (forward, then
backward): the weights read last by one step are the first the next one needs, so
they are still in cache when the weights are a little larger than it (a chunk at
H=256: 25.3 -> 22.5 us/frame). Each row's sum is the same in both directions.
W and R are then stored as panels of those rows (simd.py): zero rows pad them to
C_ROWS, and each group of GROUP rows is stored k-major.
"""

BLOCK = 64  # hidden units per block: 4*BLOCK gate values stay in L1 for the update
#            (32 measured slower: H=256 step 31 -> 38 us, H=64 chunk 1.8 -> 1.9-2.7 us/frame; 128 equal)

# header row
HD_NCELL = 0  # number of cells
HD_NLAYER = 1  # number of layers
HD_BLOCK = 2  # BLOCK used when packing
HD_IN = 3  # input width of layer 0 (embedding width for token models)
HD_OUT = 4  # output width of the model (head rows, or top layer width)
HD_TOP = 5  # top layer width: sum of P over its directions
HD_HEAD_W = 6  # offset of the head weight (O, TOP) in ws, or -1
HD_HEAD_B = 7  # offset of the head bias (O,) in ws, or -1
HD_HEAD_ACT = 8  # head activation code (see pointwise.HEAD_*)
HD_PMAX = 9  # row stride of h in state arrays
HD_HMAX = 10  # row stride of c in state arrays
HD_THREADS = 11  # threads that split a cell's blocks (1: no parallel region)
HD_ST_G = 12  # streaming buffer, after the state: g, one block's gate values per thread (THREADS * 4*BLOCK)
HD_ST_M = 13  # offset of m, o * h(c) before projection (HMAX)
HD_ST_Y = 14  # offset of y, the output (OUT)
HD_ST_LEN = 15  # total length of a streaming buffer
HD_ST_FLIP = 16  # offset of one float, nonzero when the next step walks its weights backwards
HD_FIELDS = 17

# cell rows
C_LAYER = 0
C_REV = 1  # 1 for the reverse direction
C_I = 2  # input width
C_H = 3  # hidden units (size of c)
C_P = 4  # size of h: proj_size, or H
C_W = 5  # offset of the W panel (4H, I) in Packed.wp (elements of the panels' dtype)
C_R = 6  # offset of the R panel (4H, P) in Packed.wp: dense, so a chunk's recurrence streams it whole
C_B = 7  # offset of the packed bias Wb + Rb, (4H,)
C_PEEP = 8  # offset of the peepholes (3H,) in order i, o, f (unit order); zeros when none
C_PROJ = 9  # offset of the projection (P, H), or -1
C_PRM = 10  # offset of 7 floats: alpha/beta of f, g, h, then clip (float32 max when none)
C_ACTF = 11  # activation codes of f, g, h
C_ACTG = 12
C_ACTH = 13
C_IFORGET = 14  # 1 when input_forget (f = 1 - i)
C_COL = 15  # first column of this direction in the layer's output
C_ROWS = 16  # rows of the W and R panels: 4H padded to whole row sets of the gate kernel
C_WIDE = 17  # which gate products stream from memory, so walk four panel groups at once
#             (simd.py): bit 0 a step's W.x + R.h, bit 1 a chunk recurrence's R.h alone
C_FIELDS = 18
