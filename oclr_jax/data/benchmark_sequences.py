"""The official evaluation sequence lists (facts from the official OCLR `config.py`).

DAVIS2016: the 20 DAVIS 2016 val sequences; DAVIS2017-motion: the 30 DAVIS 2017 val sequences;
SegTrackv2: all 14; FBMS-59: the 30 test sequences; MoCA: the 88 sequences of Motion Grouping's
filtered MoCA.  A DAVIS copy's own `ImageSets` file takes precedence where present.
"""

DAVIS2016_VAL = (
    "blackswan", "bmx-trees", "breakdance", "camel", "car-roundabout", "car-shadow", "cows",
    "dance-twirl", "dog", "drift-chicane", "drift-straight", "goat", "horsejump-high",
    "kite-surf", "libby", "motocross-jump", "paragliding-launch", "parkour", "scooter-black",
    "soapbox")
DAVIS2017_VAL = (
    "bike-packing", "blackswan", "bmx-trees", "breakdance", "camel", "car-roundabout",
    "car-shadow", "cows", "dance-twirl", "dog", "dogs-jump", "drift-chicane", "drift-straight",
    "goat", "gold-fish", "horsejump-high", "india", "judo", "kite-surf", "lab-coat", "libby",
    "loading", "mbike-trick", "motocross-jump", "paragliding-launch", "parkour", "pigs",
    "scooter-black", "shooting", "soapbox")
SEGTRACKV2_VAL = (
    "drift", "birdfall", "girl", "cheetah", "worm", "parachute", "monkeydog", "hummingbird",
    "soldier", "bmx", "frog", "penguin", "monkey", "bird_of_paradise")
FBMS59_VAL = (
    "camel01", "cars1", "cars10", "cars4", "cars5", "cats01", "cats03", "cats06", "dogs01",
    "dogs02", "farm01", "giraffes01", "goats01", "horses02", "horses04", "horses05", "lion01",
    "marple12", "marple2", "marple4", "marple6", "marple7", "marple9", "people03", "people1",
    "people2", "rabbits02", "rabbits03", "rabbits04", "tennis")
MOCA_VAL = (
    "arabian_horn_viper", "arctic_fox_1", "arctic_wolf_1", "black_cat_1", "crab", "crab_1",
    "cuttlefish_0", "cuttlefish_1", "cuttlefish_4", "cuttlefish_5", "devil_scorpionfish",
    "devil_scorpionfish_1", "flatfish_2", "flatfish_4", "flounder", "flounder_3", "flounder_4",
    "flounder_5", "flounder_6", "flounder_7", "flounder_8", "flounder_9", "goat_1", "hedgehog_1",
    "hedgehog_2", "hedgehog_3", "hermit_crab", "jerboa", "jerboa_1", "lion_cub_0", "lioness",
    "marine_iguana", "markhor", "meerkat", "mountain_goat", "peacock_flounder_0",
    "peacock_flounder_1", "peacock_flounder_2", "polar_bear_0", "polar_bear_2", "scorpionfish_4",
    "scorpionfish_5", "seal_1", "shrimp", "snow_leopard_0", "snow_leopard_1", "snow_leopard_2",
    "snow_leopard_3", "snow_leopard_6", "snow_leopard_7", "snow_leopard_8",
    "spider_tailed_horned_viper_0", "spider_tailed_horned_viper_2",
    "spider_tailed_horned_viper_3", "arctic_fox", "arctic_wolf_0", "devil_scorpionfish_2",
    "elephant", "goat_0", "hedgehog_0", "lichen_katydid", "lion_cub_3", "octopus", "octopus_1",
    "pygmy_seahorse_2", "rodent_x", "scorpionfish_0", "scorpionfish_1", "scorpionfish_2",
    "scorpionfish_3", "seal_2", "bear", "black_cat_0", "dead_leaf_butterfly_1", "desert_fox",
    "egyptian_nightjar", "pygmy_seahorse_4", "seal_3", "snowy_owl_0", "flatfish_0", "flatfish_1",
    "fossa", "groundhog", "ibex", "lion_cub_1", "nile_monitor_1", "polar_bear_1",
    "spider_tailed_horned_viper_1")
