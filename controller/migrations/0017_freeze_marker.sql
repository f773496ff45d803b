-- A freeze under way (issue 10): the freeze step records here, before it
-- freezes anything, which try it is and when it began; the transition
-- that records the step's outcome clears it (the projection). A freeze
-- step that finds it set knows a previous run of it stopped mid-freeze
-- (the controller killed): it undoes that freeze and counts it missed.
ALTER TABLE migrations ADD COLUMN freeze_started jsonb;
