"""Model families. Each registers itself in ``langfree.families.registry``."""
