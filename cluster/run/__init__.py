"""`career run`: the experiment (`experiment`, `sizes`), the models it trains (`models`), its
steps (`step_list`), one survey's Ray task (`survey`) and its downstream steps (`uses`), and the
command (`job`)."""
