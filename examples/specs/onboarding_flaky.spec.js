// Walks through onboarding. The carousel animation makes the first attempt
// time out now and then: qgjob retries it and reports the pass as flaky.
const { test, expect } = require("appwright");

test("completes onboarding", async ({ device }) => {
  for (const page of ["Track orders", "Save favourites", "Get offers"]) {
    await expect(device.getByText(page)).toBeVisible();
    await device.getByText("Next").tap();
  }
  await device.getByText("Get started").tap();
  await expect(device.getByText("Welcome")).toBeVisible();
});
