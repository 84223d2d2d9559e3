"""coxlmm's Hydra configs. The package ships them as `coxlmm.conf` (src/coxlmm/conf is a link to this
folder), so an installed `coxlmm` composes them from any directory as pkg://coxlmm.conf."""
