// Edits the display name on the profile screen.
const { test, expect } = require("appwright");

test("updates the display name", async ({ device }) => {
  await device.getById("tab-profile").tap();
  await device.getByText("Edit").tap();
  await device.getById("display-name").fill("QA Bot");
  await device.getByText("Save").tap();
  await expect(device.getByText("QA Bot")).toBeVisible();
});
