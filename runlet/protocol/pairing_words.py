"""The 256 words of pairing codes (`runlet.protocol.pairing`): short, common, distinct.

Each word is one byte of a code's password; a code reads like ``4-river-7-cactus``. The list
is sorted, lower-case and without repeats; a test keeps it so.
"""

from __future__ import annotations

WORDS: tuple[str, ...] = tuple(
    """
    acorn actor adobe agent alarm album alley amber angel ankle apple apron arena arrow aspen
    atlas attic autumn bacon badge badger bagel baker bamboo banjo barn basil beach beard
    beetle bench berry bison blade blanket blossom boat bonus boot border bottle branch bread
    brick bridge brook broom bucket bugle button cabin cactus camel candle canoe canyon carbon
    carpet carrot castle cedar cello chalk cherry chess chimney cider circle citrus cliff cloud
    clover cobalt cocoa comet coral cotton cougar coyote crane crayon cricket crown crystal
    cupcake curtain daisy dancer delta desert diesel dinner dolphin donkey dragon drum eagle
    easel ember engine falcon feather fern fiddle finch flute forest fossil fountain fox galaxy
    garden garlic gecko geyser ginger giraffe glacier globe goose grape gravel guitar hammer
    harbor harvest hazel helmet heron hollow honey hornet husky igloo iris island ivory jacket
    jaguar jasmine jelly jigsaw juniper kayak kernel kettle kiwi koala ladder lagoon lantern
    laptop lemon lentil leopard lilac linen lizard lobster locket lotus lumber magnet mango
    maple marble meadow melon meteor mint mirror mitten monkey moose mosaic muffin mustard
    napkin nectar nickel noodle nutmeg oasis ocean olive onion orbit orchid otter oyster paddle
    panda papaya parrot pebble pepper piano pickle pigeon pillow pine pirate planet plum pocket
    pony poppy potato pretzel puffin pumpkin quartz quilt rabbit radish raven reef ribbon river
    robin rocket saddle salmon sandal sapphire scarf shadow shell silver sketch sled spruce
    squid stone sunset swan tiger timber toast tomato topaz tractor trumpet tulip tunnel turtle
    velvet violet walnut walrus willow window wizard yogurt zebra zipper
    """.split()  # noqa: SIM905 - one word list, wrapped like prose
)
