"""Parallelism applied to the unmodified ltx-core transformer by small functions (as torchtitan does).

`sequence`: Ulysses sequence parallelism through ltx-core's pluggable attention callable and forward hooks.
`guidance`: the guided passes of a step, run sequentially, batched, or spread over a gang's ranks.
`sharding`: FSDP2 weight sharding of the transformer blocks.
`group`: the process group a gang's ranks share.
"""
