"""`career scale`: the grid (`grid`), its cost before training (`plan`), the study's work
(`study`) and the command (`job`)."""
