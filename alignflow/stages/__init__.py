"""One Step per stage (seeds, instructions and evol, responses, judge, pairs, revisions, cai_labels), the stage registry and the exports."""
